"""Pre-train or fine-tune PixArt: `python -m train.pretrain CONFIG [key=value ...]`.

CONFIG is a YAML file (configs/*.yaml) read onto the schema in pixart_jax/training/config.py; `key=value`
overrides any field. Re-running the same command on the same workdir resumes the run exactly (weights, optimizer,
EMA, RNG and data order). SIGTERM or SIGINT (Ctrl-C) saves a checkpoint and exits with code 75 (before the first
step or after the last, it exits 75 at once); a non-finite loss stops the run without saving (code 3); a bad config
exits with code 2 before anything is built. With a `lora:` section (e.g. `model.init_from=BASE lora.rank=16`) only
LoRA adapters on the base train, and a finished run writes them as a PEFT folder to WORKDIR/lora.
"""
import sys

from train.signals import exit_on_stop_signals

exit_on_stop_signals(__name__)  # first: a SIGTERM or SIGINT while the imports below run exits 75

from pixart_jax.training.command import run_program  # noqa: E402
from pixart_jax.training.config import load_config  # noqa: E402
from pixart_jax.training.pretraining import train  # noqa: E402


def main(argv=None):
    return run_program(argv, __doc__, load_config, train)


if __name__ == "__main__":
    sys.exit(main())
