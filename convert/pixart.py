"""Convert PixArt transformer checkpoints between layouts, or list what a checkpoint holds.

  python -m convert.pixart --src PATH --dst OUT [--to diffusers|original|jax] [--config NAME]
  python -m convert.pixart inspect PATH

(the same as `pixart-jax convert ...` and `pixart-jax inspect PATH`). --src: a diffusers transformer/ (or pipeline)
directory, an original `.pth` / `.safetensors`, or our directory. --to original writes OUT itself if it ends in
.pth/.safetensors, else OUT/<variant>.pth. Output appears only when complete: a failed conversion leaves nothing
behind.
"""
import sys

from pixart_jax.cli import main as cli_main


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return cli_main(argv if argv[:1] == ["inspect"] else ["convert", *argv])


if __name__ == "__main__":
    sys.exit(main())
