"""ControlNet-Transformer training (PixArt-δ, spec §5.2, §5.4), run by `python -m train.controlnet CONFIG [k=v ...]`.

The base is `model.init_from` (any layout load_transformer reads) or a fresh `model.preset`; a new ControlNet copies
its first `controlnet.copies` blocks (13 released), or `controlnet.init_from` continues from a ControlNet checkpoint
(any layout load_controlnet reads). Only the copies and the zero linears train: the state holds AdamW moments for
them alone, no EMA (the reference keeps none), and the frozen base passes through every step bitwise unchanged. The
loss is PixArt's (ε-MSE + learned-variance bound, caption dropout to y_embedding), with the control latents
c = latent_scale · (a fresh sample of the control posterior `control_mean`, `control_std` of each record: written
by `train.extract_features --control canny|hed`). The loop is pixart_jax/training/loop.py's (sharding, checkpoints
and exact resume, metrics, SIGTERM). A finished run exports the ControlNet to WORKDIR/export/controlnet (our
format; `pixart_jax.save_controlnet` writes the original .pth).
"""
import dataclasses
import functools
import os
from typing import Optional

import jax
from flax import nnx
from jax.experimental import multihost_utils

from pixart_jax.choices import DType
from pixart_jax.models.controlnet import RELEASED_COPIES, PixArtControlNet
from pixart_jax.training import config as config_lib
from pixart_jax.training import loop
from pixart_jax.training.controlnet_step import controlnet_state, controlnet_update
from pixart_jax.training.data import CONTROL_FIELDS, read_examples
from pixart_jax.training.pretraining import PixArtObjective
from pixart_jax.training.program import Program, build_model, model_options
from pixart_jax.training.state import split_model
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet_jax


@dataclasses.dataclass
class ControlNetSection:
    copies: int = RELEASED_COPIES       # base blocks copied into the trainable branch (1 .. depth - 1)
    init_from: Optional[str] = None     # continue from a ControlNet checkpoint instead of copying the base


@dataclasses.dataclass
class ControlNetTrainConfig(config_lib.TrainConfig):
    controlnet: ControlNetSection = dataclasses.field(default_factory=ControlNetSection)


def _check(cfg):
    depth = None if cfg.controlnet.init_from else config_lib.model_depth(cfg.model)
    problems = []
    if depth is not None and cfg.controlnet.copies >= depth:
        problems.append(f"controlnet.copies must be at most the base's depth - 1 = {depth - 1}")
    return config_lib.check_program(cfg, problems, "ControlNet")


load_config = functools.partial(config_lib.load_config, schema=ControlNetTrainConfig, validate=_check)


class ControlNetTraining(Program):
    """The ControlNet program: a PixArtControlNet (new, or continued from `controlnet.init_from`), its state with
    the base frozen, data with control latents."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.objective = PixArtObjective(latent_scale=cfg.data.latent_scale, prediction_type=cfg.model.prediction_type,
                                         caption_dropout=cfg.model.caption_dropout)

    def model(self):
        """A new ControlNet copying the base's first `controlnet.copies` blocks, or `controlnet.init_from`; both
        run as `model:` says (remat, activation dtype, attention)."""
        cfg = self.cfg
        if cfg.controlnet.init_from:
            return load_controlnet(cfg.controlnet.init_from, dtype=DType(cfg.model.compute_dtype).jax,
                                   **model_options(cfg.model))
        return PixArtControlNet(build_model(cfg.model, cfg.seed), cfg.controlnet.copies)

    def batch_shapes(self, model_cfg, latent_hw):
        """A feature batch's fields plus the control image's posterior (data.CONTROL_FIELDS)."""
        shapes = super().batch_shapes(model_cfg, latent_hw)
        return {**shapes, **{name: shapes["mean"] for name in CONTROL_FIELDS}}

    def data(self, model_cfg):
        """Generated examples with control latents (`data.source: synthetic`), or a records directory that has
        them (a ConfigError otherwise, before anything is compiled)."""
        cfg = self.cfg
        if cfg.data.source == "synthetic":
            return synthetic_examples(cfg.data.synthetic_examples, seed=cfg.seed, control=True,
                                      caption_channels=model_cfg.caption_channels, max_tokens=model_cfg.max_tokens,
                                      buckets=tuple(cfg.data.synthetic_buckets))
        missing = [name for name in CONTROL_FIELDS if name not in read_examples(cfg.data.source)[0]]
        if missing:
            raise config_lib.ConfigError(f"data.source {cfg.data.source} holds no control latents ({missing}): "
                                         "write it with `python -m train.extract_features --control canny|hed`")
        return cfg.data.source

    def initial_state(self, params, buffers):
        return controlnet_state(self.optimizer.tx, self.cfg.seed, params, buffers)

    def update(self, model):
        return controlnet_update(split_model(model)[0], self.optimizer, self.objective)


def trained_model(result):
    """The PixArtControlNet of a finished run's state (global arrays)."""
    state = result.state
    return nnx.merge(result.graphdef, {**state["params"], **state["frozen"]}, state["buffers"])


def export(result, directory):
    """Writes the trained ControlNet to DIRECTORY/controlnet (our format). Every process gathers the weights;
    process 0 writes."""
    state = multihost_utils.process_allgather(
        {k: result.state[k] for k in ("params", "frozen", "buffers")}, tiled=True)
    if jax.process_index() == 0:
        save_controlnet_jax(trained_model(dataclasses.replace(result, state=state)),
                            os.path.join(directory, "controlnet"))


def train(cfg, examples=None):
    """Runs or resumes the ControlNet training `cfg` describes; exports when it finishes (not when preempted).
    Returns loop.train's result."""
    result = loop.train(ControlNetTraining(cfg), examples)
    if not result.preempted:
        export(result, os.path.join(os.path.abspath(cfg.workdir), "export"))
    return result
