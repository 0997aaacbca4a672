"""Converting PixArt transformer and ControlNet-Transformer checkpoints between layouts, and listing what a
checkpoint holds.

Layouts: "diffusers" (a transformer/ directory), "original" (the PixArt repo's `.pth` / `.safetensors` state
dict) and "jax" (our directory: config.json + an Orbax checkpoint). A ControlNet-Transformer has no diffusers
layout; its "original" output is a state-dict file, or (a destination without .pth/.safetensors) the official
folder (controlnet.pth + config.json). Run as `pixart-jax convert` or `python -m convert.pixart`.
"""
import os

import numpy as np

from pixart_jax.files import check_apart, check_destination, read_json
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.weights import WeightsError
from pixart_jax.weights import controlnet as controlnet_weights
from pixart_jax.weights import transformer as transformer_weights
from pixart_jax.weights.files import read_state_dict, read_weights
from pixart_jax.weights.keymaps.controlnet import is_controlnet_config, is_controlnet_state_dict
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.safetensors_io import LazyTensors

LAYOUTS = ("diffusers", "original", "jax")
ORIGINAL_SUFFIXES = (".pth", ".safetensors")
WRITERS = {"diffusers": transformer_weights.save_diffusers, "jax": transformer_weights.save_jax}


def original_path(model, dst):
    """`dst` itself when it names a .pth/.safetensors file, else dst/<variant>.pth."""
    if dst.endswith(ORIGINAL_SUFFIXES):
        return dst
    name = next((n for n, c in PRESETS.items() if c == model.cfg and n != "tiny"), "PixArt")
    os.makedirs(dst, exist_ok=True)
    return os.path.join(dst, f"{name}.pth")


def is_controlnet(path: str) -> bool:
    """Whether `path` holds a ControlNet-Transformer rather than a plain transformer: a folder by its config.json,
    a state-dict file by its keys (a safetensors header, or the whole .pth)."""
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        return os.path.isfile(config) and is_controlnet_config(read_json(config))
    if not os.path.isfile(path):
        return False
    return is_controlnet_state_dict(LazyTensors([path]) if path.endswith(".safetensors") else read_state_dict(path))


def convert_controlnet(src, dst, to, config=None, overwrite=False):
    """`convert` for a ControlNet-Transformer `src` (any layout load_controlnet reads) into "original" (a .pth /
    .safetensors file, or the official folder) or "jax"."""
    if to == "diffusers":
        raise WeightsError(f"{src} is a ControlNet-Transformer, which has no diffusers layout: convert it --to "
                              "original (a .pth / .safetensors file, or the official folder) or --to jax")
    check_destination(dst, directory=to == "jax" or not dst.endswith(ORIGINAL_SUFFIXES), overwrite=overwrite,
                      keep=(src,))
    model = controlnet_weights.load_controlnet(src, config=config)
    save = controlnet_weights.save_controlnet_jax if to == "jax" else controlnet_weights.save_controlnet
    save(model, dst, overwrite=overwrite, keep=(src,))
    return dst


def convert(src, dst, to, config=None, overwrite=False):
    """Loads `src` (any layout load_transformer or, for a ControlNet-Transformer, load_controlnet reads) and writes
    it to `dst` in layout `to`; returns the path written. The destination is checked before anything is loaded: an
    existing one is replaced only if pixart-jax wrote it (or it is empty), or with `overwrite`, and never when it
    is, holds or lies inside `src`."""
    if is_controlnet(src):
        return convert_controlnet(src, dst, to, config, overwrite)
    into_folder = to == "original" and not dst.endswith(ORIGINAL_SUFFIXES)  # dst/<variant>.pth, beside what is there
    if into_folder and os.path.exists(dst) and not (os.path.isdir(dst) and os.access(dst, os.W_OK | os.X_OK)):
        raise WeightsError(f"cannot write into {dst}: it is {'not writable' if os.path.isdir(dst) else 'a file'}")
    if into_folder:
        check_apart(dst, (src,))
    else:
        check_destination(dst, directory=to != "original", overwrite=overwrite, keep=(src,))
    model = transformer_weights.load_transformer(src, config=config)
    if to == "original":
        dst = original_path(model, dst)
        transformer_weights.save_original(model, dst, overwrite=overwrite, keep=(src,))
    else:
        WRITERS[to](model, dst, overwrite=overwrite, keep=(src,))
    return dst


def layout_and_tensors(path):
    """(layout name, {key: array} in that layout) of any supported checkpoint; a state-dict file is read once."""
    if os.path.isfile(path):
        tensors = read_state_dict(path)
        return ("ControlNet-Transformer, original" if is_controlnet_state_dict(tensors) else "original"), tensors
    if is_controlnet(path):  # a folder, by its config.json
        fmt = controlnet_weights.detect_format(path)
        if fmt == "jax":
            return f"ControlNet-Transformer, {fmt}", flat_arrays(controlnet_weights.load_controlnet(path))
        return f"ControlNet-Transformer, {fmt}", read_state_dict(
            os.path.join(path, controlnet_weights.OFFICIAL_WEIGHTS))
    fmt = transformer_weights.detect_format(path)
    if fmt == "diffusers":
        directory = path if os.path.exists(os.path.join(path, "config.json")) else os.path.join(path, "transformer")
        return fmt, read_weights(directory, transformer_weights.DIFFUSERS_WEIGHTS)
    return fmt, flat_arrays(transformer_weights.load_jax(path))


def describe(path):
    """Lines listing a checkpoint's layout, tensor count and every key with its shape and dtype."""
    layout, tensors = layout_and_tensors(path)
    lines = [f"{path}: {layout} layout, {len(tensors)} tensors, "
             f"{sum(int(np.prod(t.shape)) for t in tensors.values()):,} values"]
    width = max(map(len, tensors), default=0)
    lines += [f"  {key:<{width}}  {str(tuple(tensors[key].shape)):<20} {tensors[key].dtype}"
              for key in sorted(tensors)]
    return lines
