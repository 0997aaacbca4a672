"""Convert PixArt transformer checkpoints between layouts, or list what a checkpoint holds.

  python -m convert.pixart --src PATH --dst OUT [--to diffusers|original|jax] [--config NAME]
  python -m convert.pixart inspect PATH

--src: a diffusers transformer/ (or pipeline) directory, an original `.pth` / `.safetensors`, or our directory.
--to original writes OUT itself if it ends in .pth/.safetensors, else OUT/<variant>.pth. Output appears only
when complete: a failed conversion leaves nothing behind.
"""
import argparse
import os
import sys

import numpy as np

from pixart_jax import checkpoints
from pixart_jax.config import PRESETS
from pixart_jax.weights import CheckpointError
from pixart_jax.weights.files import read_state_dict, read_weights
from pixart_jax.weights.nnx_state import flat_arrays

WRITERS = {"diffusers": checkpoints.save_diffusers, "jax": checkpoints.save_jax}


def original_path(model, dst):
    if dst.endswith((".pth", ".safetensors")):
        return dst
    name = next((n for n, c in PRESETS.items() if c == model.cfg and n != "tiny"), "PixArt")
    os.makedirs(dst, exist_ok=True)
    return os.path.join(dst, f"{name}.pth")


def convert(src, dst, to, config=None):
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


def inspect(path):
    tensors = tensors_of(path)
    print(f"{path}: {checkpoints.detect_format(path)} layout, {len(tensors)} tensors, "
          f"{sum(int(np.prod(t.shape)) for t in tensors.values()):,} values")
    width = max(map(len, tensors), default=0)
    for key in sorted(tensors):
        print(f"  {key:<{width}}  {str(tuple(tensors[key].shape)):<20} {tensors[key].dtype}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["inspect"]:
            parser = argparse.ArgumentParser(prog="python -m convert.pixart inspect")
            parser.add_argument("path")
            inspect(parser.parse_args(argv[1:]).path)
            return 0
        parser = argparse.ArgumentParser(prog="python -m convert.pixart", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--src", required=True)
        parser.add_argument("--dst", required=True)
        parser.add_argument("--to", choices=["diffusers", "original", "jax"], default="jax")
        parser.add_argument("--config", help="variant of an original .pth whose file name does not say it, "
                                             f"one of {sorted(PRESETS)}")
        args = parser.parse_args(argv)
        print(f"wrote {convert(args.src, args.dst, args.to, args.config)}")
        return 0
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
