"""Random re-draws of every parameter of a reference (torch) model or of ours: no zero-initialised layer may hide a
wrong key mapping in a parity check."""
import numpy as np


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
