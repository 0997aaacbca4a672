"""DreamBooth: `python -m train.dreambooth CONFIG [key=value ...]` (configs/dreambooth_*.yaml).

`model.init_from` is the base model's PixArt pipeline folder (its T5 and VAE encode the images, its transformer
generates the class images). `dreambooth.instance_images` (a folder) captioned `dreambooth.instance_prompt` ("a
photo of sks dog") fine-tune it; `dreambooth.prior_preservation=true` with `dreambooth.class_prompt` adds class
images (generated once by the base, or `dreambooth.class_images`) weighted by `dreambooth.prior_loss_weight`.
Encodings and class images are cached in WORKDIR/dreambooth and reused. With a `lora:` section only LoRA adapters
train and a finished run writes them as a PEFT folder to WORKDIR/lora; without one every weight trains and a
finished run writes WORKDIR/export/{transformer,scheduler}. Checkpoints, exact resume, metrics and exit codes are
those of `train.pretrain`; bad settings and unreadable images exit with code 2 before anything is built.
"""
import sys

from train.signals import exit_on_stop_signals

exit_on_stop_signals(__name__)  # first: a SIGTERM or SIGINT while the imports below run exits 75

from pixart_jax.training.command import run_program  # noqa: E402
from pixart_jax.training.dreambooth import load_config, train  # noqa: E402


def main(argv=None):
    return run_program(argv, __doc__, load_config, train)


if __name__ == "__main__":
    sys.exit(main())
