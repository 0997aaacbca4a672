"""Converting PixArt transformer checkpoints between layouts, and listing what a checkpoint holds.

Layouts: "diffusers" (a transformer/ directory), "original" (the PixArt repo's `.pth` / `.safetensors` state
dict) and "jax" (our directory: config.json + an Orbax checkpoint). Run as `pixart-jax convert` or
`python -m convert.pixart`.
"""
import os

import numpy as np

from pixart_jax import checkpoints
from pixart_jax.config import PRESETS
from pixart_jax.weights.files import read_state_dict, read_weights
from pixart_jax.weights.nnx_state import flat_arrays

LAYOUTS = ("diffusers", "original", "jax")
WRITERS = {"diffusers": checkpoints.save_diffusers, "jax": checkpoints.save_jax}


def original_path(model, dst):
    """`dst` itself when it names a .pth/.safetensors file, else dst/<variant>.pth."""
    if dst.endswith((".pth", ".safetensors")):
        return dst
    name = next((n for n, c in PRESETS.items() if c == model.cfg and n != "tiny"), "PixArt")
    os.makedirs(dst, exist_ok=True)
    return os.path.join(dst, f"{name}.pth")


def convert(src, dst, to, config=None):
    """Loads `src` (any layout load_transformer reads) and writes it to `dst` in layout `to`; returns the path
    written."""
    model = checkpoints.load_transformer(src, config=config)
    if to == "original":
        dst = original_path(model, dst)
        checkpoints.save_original(model, dst)
    else:
        WRITERS[to](model, dst)
    return dst


def tensors_of(path):
    """{key: array} of any supported checkpoint, in its own layout."""
    fmt = checkpoints.detect_format(path)
    if fmt == "original":
        return read_state_dict(path)
    if fmt == "diffusers":
        directory = path if os.path.exists(os.path.join(path, "config.json")) else os.path.join(path, "transformer")
        return read_weights(directory, checkpoints.DIFFUSERS_WEIGHTS)
    return flat_arrays(checkpoints.load_jax(path))


def describe(path):
    """Lines listing a checkpoint's layout, tensor count and every key with its shape and dtype."""
    tensors = tensors_of(path)
    lines = [f"{path}: {checkpoints.detect_format(path)} layout, {len(tensors)} tensors, "
             f"{sum(int(np.prod(t.shape)) for t in tensors.values()):,} values"]
    width = max(map(len, tensors), default=0)
    lines += [f"  {key:<{width}}  {str(tuple(tensors[key].shape)):<20} {tensors[key].dtype}"
              for key in sorted(tensors)]
    return lines
