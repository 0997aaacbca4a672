"""Latent consistency distillation (PixArt-δ): `python -m train.lcm CONFIG [key=value ...]`.

The teacher is `model.init_from` (a converted checkpoint, any layout load_transformer reads) or, without it, a
freshly initialised `model.preset`; student and EMA target start as copies of it. The config is the pre-training
schema plus an `lcm:` section (pixart_jax/training/lcm.py). Checkpoints, exact resume, metrics and exit codes
are those of `train.pretrain`. A finished run exports the EMA target as a diffusers transformer to
WORKDIR/export/transformer, with an LCMScheduler config in WORKDIR/export/scheduler.

With a `lora:` section (LCM-LoRA; needs model.init_from) the student is the base plus LoRA adapters, the teacher the
base with them off, the target an EMA of the adapters; the adapter is exported as a PEFT folder to WORKDIR/lora.
"""
import sys

from train.signals import exit_on_stop_signals

exit_on_stop_signals(__name__)  # first: a SIGTERM or SIGINT while the imports below run exits 75

from pixart_jax.training.command import run_program  # noqa: E402
from pixart_jax.training.lcm import distill, load_config  # noqa: E402


def main(argv=None):
    return run_program(argv, __doc__, load_config, distill)


if __name__ == "__main__":
    sys.exit(main())
