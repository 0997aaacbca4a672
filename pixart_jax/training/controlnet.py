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
import jax.numpy as jnp
from flax import nnx
from jax.experimental import multihost_utils

from pixart_jax.choices import DType
from pixart_jax.models.controlnet import RELEASED_COPIES, PixArtControlNet
from pixart_jax.models.vae import LATENT_SCALE, AutoencoderKL
from pixart_jax.samplers.prediction import check_prediction_type
from pixart_jax.training import config as config_lib
from pixart_jax.training import loop
from pixart_jax.training.data import CONTROL_FIELDS, feature_batch_shapes, read_examples
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.step import TrainStep, abstract_state, build_model, init_state, optimizer_update
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet_jax

BASE = "base"  # the frozen part of the model's parameter tree


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


def _initial_controlnet_state(tx, seed):
    def init(params, buffers):
        trainable = {k: v for k, v in params.items() if k != BASE}
        return {"step": jnp.zeros((), jnp.int32), "params": trainable, "frozen": {BASE: params[BASE]},
                "buffers": buffers, "opt": tx.init(trainable), "rng": jax.random.PRNGKey(seed)}
    return init


# (state, shardings) and (ShapeDtypeStructs, shardings) of the ControlNet state: `params` (the copies and zero
# linears, trained), `frozen` ({"base": the base's parameters}), `buffers`, `opt` (AdamW of `params` only), `rng`.
init_controlnet_state = functools.partial(init_state, initial=_initial_controlnet_state)
abstract_controlnet_state = functools.partial(abstract_state, initial=_initial_controlnet_state)


def draw_control(key, batch, latent_scale=LATENT_SCALE):
    """latent_scale · (control_mean + control_std · N(0, I)): a fresh sample of the control image's posterior."""
    return latent_scale * AutoencoderKL.sample(jnp.asarray(batch["control_mean"], jnp.float32),
                                               jnp.asarray(batch["control_std"], jnp.float32), key)


class ControlNetStep(TrainStep):
    """The jitted step `(state, batch) -> (state, metrics {loss, grad_norm, lr})` with the state donated: the
    PixArt loss of the ControlNet on the batch's control latents, AdamW on the branch; the base is not touched."""

    def __init__(self, graphdef, tx, schedule, state_shardings, mesh, *, accum_steps=1, caption_dropout=0.1,
                 latent_scale=LATENT_SCALE, prediction_type="epsilon", tables=None):
        check_prediction_type(prediction_type)
        self.traces = 0
        tables = diffusion_tables() if tables is None else tables

        def step(state, batch):
            self.traces += 1
            key, k_control = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
            buffers = state["buffers"]

            def loss_fn(params):
                model = nnx.merge(graphdef, {**params, **state["frozen"]}, buffers)
                inputs = draw_training_inputs(key, batch, tables, caption_dropout, buffers[BASE]["y_embedding"],
                                              latent_scale)
                control = draw_control(k_control, batch, latent_scale)
                return pixart_loss(functools.partial(model, control=control), batch, tables, *inputs,
                                   prediction_type)

            params, opt, _, metrics = optimizer_update(tx, schedule, accum_steps, loss_fn, state["params"],
                                                       state["opt"], None, 0.0, state["step"])
            return dict(state, step=state["step"] + 1, params=params, opt=opt), metrics

        self._compile(step, state_shardings, mesh)


class ControlNetTraining(loop.Pretraining):
    """The ControlNet model, data, state and step for loop.train's loop."""
    abstract_state = staticmethod(abstract_controlnet_state)
    init_state = staticmethod(init_controlnet_state)

    @staticmethod
    def build_model(cfg):
        if cfg.controlnet.init_from:
            model = load_controlnet(cfg.controlnet.init_from, dtype=DType(cfg.model.compute_dtype).jax)
        else:
            model = PixArtControlNet(build_model(cfg.model, cfg.seed), cfg.controlnet.copies)
        model.base.remat = cfg.model.remat
        return model

    @staticmethod
    def batch_shapes(cfg, model_cfg, latent_hw):
        """A feature batch's fields plus the control image's posterior (data.CONTROL_FIELDS)."""
        shapes = feature_batch_shapes(cfg, model_cfg, latent_hw)
        return {**shapes, **{name: shapes["mean"] for name in CONTROL_FIELDS}}

    @staticmethod
    def data_source(cfg, model_cfg):
        """Generated examples with control latents (`data.source: synthetic`), or a records directory that has
        them (a ConfigError otherwise, before anything is compiled)."""
        if cfg.data.source == "synthetic":
            return synthetic_examples(cfg.data.synthetic_examples, seed=cfg.seed, control=True,
                                      caption_channels=model_cfg.caption_channels, max_tokens=model_cfg.max_tokens,
                                      buckets=tuple(cfg.data.synthetic_buckets))
        missing = [name for name in CONTROL_FIELDS if name not in read_examples(cfg.data.source)[0]]
        if missing:
            raise config_lib.ConfigError(f"data.source {cfg.data.source} holds no control latents ({missing}): "
                                         "write it with `python -m train.extract_features --control canny|hed`")
        return cfg.data.source

    @staticmethod
    def make_step(cfg, graphdef, tx, schedule, shardings, mesh):
        return ControlNetStep(graphdef, tx, schedule, shardings, mesh, accum_steps=cfg.optimizer.grad_accum_steps,
                              caption_dropout=cfg.model.caption_dropout, latent_scale=cfg.data.latent_scale,
                              prediction_type=cfg.model.prediction_type)


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
    result = loop.train(cfg, examples, program=ControlNetTraining)
    if not result.preempted:
        export(result, os.path.join(os.path.abspath(cfg.workdir), "export"))
    return result
