"""ControlNet-Transformer training (PixArt-δ): `python -m train.controlnet CONFIG [key=value ...]`.

The base is `model.init_from` (any layout load_transformer reads) or a fresh `model.preset`; the ControlNet copies
its first `controlnet.copies` blocks (or continues from `controlnet.init_from`, any layout load_controlnet reads).
Only the copies and zero linears train; the base stays bitwise unchanged. Data: records with control latents
(`python -m train.extract_features ... --control canny|hed`), or `data.source=synthetic`. Checkpoints, exact resume,
metrics and exit codes are those of `train.pretrain`. A finished run exports the ControlNet to
WORKDIR/export/controlnet (`pixart_jax.load_controlnet` reads it).
"""
import sys

from train.signals import exit_on_stop_signals

exit_on_stop_signals(__name__)  # first: a SIGTERM or SIGINT while the imports below run exits 75

from pixart_jax.training.command import run_program  # noqa: E402
from pixart_jax.training.controlnet import load_config, train  # noqa: E402


def main(argv=None):
    return run_program(argv, __doc__, load_config, train)


if __name__ == "__main__":
    sys.exit(main())
