"""DreamBooth (PixArt-α `train_scripts/train_dreambooth.py`, PixArt-Σ `train_scripts/train_dreambooth_lora.py`),
run by `python -m train.dreambooth CONFIG [key=value ...]`.

A subject's few images with a rare-token prompt ("a photo of sks dog") fine-tune the base model `model.init_from`,
a PixArt pipeline folder whose T5 and VAE also encode the images (pixart_jax/training/dreambooth_data.py: no
feature extraction step; encodings and class images cached in WORKDIR/dreambooth). With a `lora:` section only LoRA
adapters train (the state of lora_step.py) and a finished run writes them as a PEFT folder to WORKDIR/lora;
without one every weight trains (pre-training's state, EMA kept) and a finished run writes the trained weights as a
diffusers transformer with the base's scheduler config to WORKDIR/export/{transformer,scheduler}.

Prior preservation (`dreambooth.prior_preservation`): each batch holds `data.batch_size` instance examples and as
many class examples (images of `class_prompt` by the base model, or a given folder), and the loss is PixArt's loss
on the instance half + `prior_loss_weight` × PixArt's loss on the class half, as diffusers' DreamBooth scripts
compute it.
"""
import dataclasses
import functools
import os
from typing import Optional

import jax.numpy as jnp

from pixart_jax.samplers import from_scheduler_config
from pixart_jax.training import config as config_lib
from pixart_jax.training import loop
from pixart_jax.training.data import REQUIRED_FIELDS
from pixart_jax.training.dreambooth_data import CLASS_PREFIX, DreamBoothExamples, check_inputs, prepare
from pixart_jax.training.lcm import export
from pixart_jax.training.lora_program import export_lora
from pixart_jax.training.loss import draw_training_inputs, pixart_sample_losses
from pixart_jax.training.pretraining import LoRAPretraining, PixArtObjective, Pretraining


@dataclasses.dataclass
class DreamBoothSection:
    instance_images: Optional[str] = None   # folder of the subject's images (required)
    instance_prompt: Optional[str] = None   # their caption, with the rare token: "a photo of sks dog" (required)
    resolution: Optional[int] = None        # square side in pixels; None: the base's native size (1024 for 1024-MS)
    prior_preservation: bool = False        # train on class images too, weighted by prior_loss_weight
    class_prompt: Optional[str] = None      # the class without the token: "a photo of a dog"
    num_class_images: int = 100
    class_images: Optional[str] = None      # a folder of class images to use instead of generating them
    prior_loss_weight: float = 1.0
    class_steps: int = 20                   # sampling steps of the generated class images (the base's sampler)
    class_guidance: float = 4.5


@dataclasses.dataclass
class DreamBoothTrainConfig(config_lib.TrainConfig):
    dreambooth: DreamBoothSection = dataclasses.field(default_factory=DreamBoothSection)


def _check(cfg):
    db, problems = cfg.dreambooth, []
    if not cfg.model.init_from and cfg.lora is None:  # lora_problems says so with a lora: section
        problems.append("model.init_from must name the base model's PixArt pipeline folder")
    for name in ("instance_images", "instance_prompt"):
        if not getattr(db, name):
            problems.append(f"dreambooth.{name} is not set")
    if db.prior_preservation and not db.class_prompt:
        problems.append("dreambooth.prior_preservation needs dreambooth.class_prompt (the class without the token, "
                        "e.g. 'a photo of a dog')")
    if db.resolution is not None and db.resolution < 8:
        problems.append(f"dreambooth.resolution must be at least 8, got {db.resolution}")
    if cfg.lora is not None:
        problems += config_lib.lora_problems(cfg)
    elif cfg.sample.every:
        problems.append("sample.every must be 0: sample grids are not drawn during DreamBooth training")
    return config_lib.check(cfg, problems, "DreamBooth")


load_config = functools.partial(config_lib.load_config, schema=DreamBoothTrainConfig, validate=_check)


def prior_preservation_loss(instance_loss, prior_loss, prior_loss_weight):
    """DreamBooth's loss: the instance loss plus prior_loss_weight times the class (prior) loss."""
    return instance_loss + prior_loss_weight * prior_loss


def joined_batch(batch):
    """The batch's instance fields followed, along the batch axis, by its class fields (CLASS_PREFIX)."""
    return {name: jnp.concatenate([batch[name], batch[CLASS_PREFIX + name]]) for name in REQUIRED_FIELDS}


@dataclasses.dataclass(frozen=True)
class PriorPreservationObjective(PixArtObjective):
    """PixArt's loss on a paired batch: the instance half's mean + prior_loss_weight × the class half's mean, in one
    forward of both halves (independent timesteps, noise and caption dropout per example)."""
    prior_loss_weight: float = 1.0

    def loss(self, model, batch, key, tables, null_caption):
        joined = joined_batch(batch)
        inputs = draw_training_inputs(key, joined, tables, self.caption_dropout, null_caption, self.latent_scale)
        losses = pixart_sample_losses(model, joined, tables, *inputs, self.prediction_type)
        count = batch["mask"].shape[0]
        instance, prior = losses[:count].mean(), losses[count:].mean()
        return (prior_preservation_loss(instance, prior, self.prior_loss_weight),
                {"instance_loss": instance, "prior_loss": prior})


class DreamBoothData:
    """What both DreamBooth programs add to their pre-training program: the objective (with prior preservation),
    the examples (dreambooth_data.prepare) and the paired batch's class fields."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.dreambooth.prior_preservation:
            self.objective = PriorPreservationObjective(**dataclasses.asdict(self.objective),
                                                        prior_loss_weight=cfg.dreambooth.prior_loss_weight)

    def data(self, model_cfg):
        return DreamBoothExamples(*prepare(self.cfg), batch_size=self.cfg.data.batch_size)

    def batch_shapes(self, model_cfg, latent_hw):
        shapes = super().batch_shapes(model_cfg, latent_hw)
        if not self.cfg.dreambooth.prior_preservation:
            return shapes
        return {**shapes, **{CLASS_PREFIX + name: shape for name, shape in shapes.items()}}


class DreamBooth(DreamBoothData, Pretraining):
    """Full fine-tuning DreamBooth (PixArt-α's): every weight trains, with an EMA."""


class LoRADreamBooth(DreamBoothData, LoRAPretraining):
    """DreamBooth-LoRA (PixArt-Σ's): adapters on the frozen base."""


def program(cfg):
    """The program of a DreamBooth config: LoRADreamBooth with a `lora:` section, else DreamBooth."""
    return DreamBooth(cfg) if cfg.lora is None else LoRADreamBooth(cfg)


def train(cfg, examples=None):
    """Runs or resumes the DreamBooth run `cfg` describes; loop.train's result. Its inputs are checked first
    (ConfigError); `examples` (e.g. DreamBoothExamples of example dicts) replace them and their caches. A finished
    (not preempted) run writes WORKDIR/lora (LoRA) or WORKDIR/export (full fine-tuning)."""
    if examples is None:
        check_inputs(cfg)
    result = loop.train(program(cfg), examples)
    if result.preempted:
        return result
    if cfg.lora is not None:  # the adapter alone: the base (any layout, maybe without a scheduler) is the user's
        export_lora(result, os.path.join(os.path.abspath(cfg.workdir), "lora"), cfg.model.init_from)
    else:  # the trained weights with the base's sampler config
        export(result, cfg, "params", from_scheduler_config(os.path.join(cfg.model.init_from, "scheduler")))
    return result

