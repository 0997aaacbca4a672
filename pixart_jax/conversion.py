"""Converting PixArt transformer checkpoints between layouts, and listing what a checkpoint holds.

Layouts: "diffusers" (a transformer/ directory), "original" (the PixArt repo's `.pth` / `.safetensors` state
dict) and "jax" (our directory: config.json + an Orbax checkpoint). Run as `pixart-jax convert` or
`python -m convert.pixart`.
"""
import os

import numpy as np

from pixart_jax import checkpoints
from pixart_jax.config import PRESETS
from pixart_jax.weights import CheckpointError
from pixart_jax.weights.files import check_destination, read_state_dict, read_weights
from pixart_jax.weights.nnx_state import flat_arrays

LAYOUTS = ("diffusers", "original", "jax")
ORIGINAL_SUFFIXES = (".pth", ".safetensors")
WRITERS = {"diffusers": checkpoints.save_diffusers, "jax": checkpoints.save_jax}


def original_path(model, dst):
    """`dst` itself when it names a .pth/.safetensors file, else dst/<variant>.pth."""
    if dst.endswith(ORIGINAL_SUFFIXES):
        return dst
    name = next((n for n, c in PRESETS.items() if c == model.cfg and n != "tiny"), "PixArt")
    os.makedirs(dst, exist_ok=True)
    return os.path.join(dst, f"{name}.pth")


def convert(src, dst, to, config=None, overwrite=False):
    """Loads `src` (any layout load_transformer reads) and writes it to `dst` in layout `to`; returns the path
    written. The destination is checked before anything is loaded: an existing one is replaced only if pixart-jax
    wrote it (or it is empty), or with `overwrite`, and never when it is, holds or lies inside `src`."""
    into_folder = to == "original" and not dst.endswith(ORIGINAL_SUFFIXES)  # dst/<variant>.pth, beside what is there
    if into_folder and os.path.exists(dst) and not (os.path.isdir(dst) and os.access(dst, os.W_OK | os.X_OK)):
        raise CheckpointError(f"cannot write into {dst}: it is {'not writable' if os.path.isdir(dst) else 'a file'}")
    if not into_folder:
        check_destination(dst, directory=to != "original", overwrite=overwrite, keep=(src,))
    model = checkpoints.load_transformer(src, config=config)
    if to == "original":
        dst = original_path(model, dst)
        checkpoints.save_original(model, dst, overwrite=overwrite, keep=(src,))
    else:
        WRITERS[to](model, dst, overwrite=overwrite, keep=(src,))
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
