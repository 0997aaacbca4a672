"""Phased Consistency Models for PixArt: `python -m train.pcm CONFIG [key=value ...]`.

The teacher is `model.init_from` (a converted checkpoint, any layout load_transformer reads) or, without it, a
freshly initialised `model.preset`; student and EMA target start as copies of it. The config is the pre-training
schema plus a `pcm:` section (pixart_jax/training/pcm.py): grid N, phases M, teacher guidance (CFG-augmented or
none with null captions), EMA or stop-gradient target, pseudo-Huber or L2, the optional adversarial loss.
Checkpoints, exact resume, metrics and exit codes are those of `train.pretrain`. A finished run exports the EMA
target as a diffusers transformer to WORKDIR/export/transformer, with a scheduler config in WORKDIR/export/scheduler
that samples the trained phases (`pixart-jax generate --scheduler pcm --steps M`).

With a `lora:` section (PCM-LoRA; needs model.init_from) the student is the base plus LoRA adapters, the teacher the
base with them off, the target an EMA of the adapters; the adapter is exported as a PEFT folder to WORKDIR/lora.
"""
import sys

from train.signals import exit_on_stop_signals

exit_on_stop_signals(__name__)  # first: a SIGTERM or SIGINT while the imports below run exits 75

from pixart_jax.training.command import run_program  # noqa: E402
from pixart_jax.training.pcm import distill, load_config  # noqa: E402


def main(argv=None):
    return run_program(argv, __doc__, load_config, distill)


if __name__ == "__main__":
    sys.exit(main())
