"""Shared helpers of the parity tests: random re-draws of reference weights and the error measure."""
import json

import numpy as np

from pixart_jax.weights import load_safetensors, save_safetensors


def redraw(module, seed, scale=1.0):
    """Re-draws every parameter of a torch module at random (no zero-init may hide a wrong key mapping).

    Matrices get N(0, 1/fan_in), vectors N(0, 0.1^2) (LayerNorm/RMSNorm weights 1 + that), all times `scale`.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * scale / np.sqrt(np.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * scale * noise)
    return module


def rel_error(ours, ref):
    """max |ours - ref| / max |ref|, the measure every parity test bounds (1e-5 in fp32)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max()
    assert scale > 0, "reference output is all zeros: the comparison would prove nothing"
    return float(np.abs(ours - ref).max() / scale)


def edited_copy(src, weights, dst, edit_state=None, edit_config=None):
    """Copies a model folder (config.json + one safetensors file named `weights`) to `dst`, letting
    edit_state(tensors) / edit_config(config) change the copy in place first. Returns `dst` as a string."""
    state = {k: np.array(v) for k, v in load_safetensors(str(src / weights)).items()}
    config = json.loads((src / "config.json").read_text())
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(config)
    dst.mkdir()
    save_safetensors(state, str(dst / weights))
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


def redraw_nnx(model, seed, scale=0.05):
    """Re-draws every nnx.Param of our model at random, N(0, scale^2) (zero-initialised layers included)."""
    import jax
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]))
    return model
