"""The error measure every parity test bounds, and edited copies of model folders for the error tests."""
import json

import numpy as np

from pixart_jax.weights import load_safetensors, save_safetensors


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


