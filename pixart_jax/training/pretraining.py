"""PixArt pre-training and fine-tuning (PixArt-alpha `train_scripts/train.py`), run by `python -m train.pretrain`.

The state: `step`, `params` (fp32 master weights, pure dicts), `buffers` (the never-trained y_embedding), `opt`
(AdamW), `ema`, `rng`. One update: PixArt's loss (ε-MSE + learned-variance bound, captions dropped to y_embedding),
AdamW, then the EMA of the weights once per optimizer step.

A config with a `lora:` section fine-tunes LoRA adapters on `model.init_from` instead (the state of lora_step.py:
the base frozen, no EMA); a finished run writes the adapter as a PEFT folder to WORKDIR/lora.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import multihost_utils

from pixart_jax import sharding
from pixart_jax.choices import DType
from pixart_jax.training import loop
from pixart_jax.training.lora_step import lora_state, lora_update, split_adapted
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.program import Program
from pixart_jax.training.state import common_state, split_model
from pixart_jax.training.step import Objective
from pixart_jax.weights.lora import add_lora, save_lora


@dataclasses.dataclass(frozen=True)
class PixArtObjective(Objective):
    """PixArt's loss, each caption replaced by y_embedding (its mask kept) with probability caption_dropout."""
    caption_dropout: float = 0.1


def pretraining_state(tx, seed, params, buffers):
    """The pre-training state; the EMA starts equal to the (possibly loaded) weights."""
    return {**common_state(tx, seed, params, buffers), "params": params, "ema": jax.tree.map(jnp.copy, params)}


def pretraining_update(graphdef, optimizer, objective, ema_rate):
    """The update of `params` by PixArt's loss (an objective: PixArtObjective), then `ema` (rate `ema_rate`)."""
    tables = diffusion_tables()

    def update(state, batch, key):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["buffers"])
            inputs = draw_training_inputs(key, batch, tables, objective.caption_dropout,
                                          state["buffers"]["y_embedding"], objective.latent_scale)
            return pixart_loss(model, batch, tables, *inputs, objective.prediction_type)

        params, opt, ema, metrics = optimizer.update(loss_fn, state["params"], state["opt"], state["ema"], ema_rate,
                                                     state["step"])
        return dict(state, params=params, opt=opt, ema=ema), metrics
    return update


class Pretraining(Program):
    """A PixArtTransformer trained with PixArt's loss and an EMA of its weights."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.objective = PixArtObjective(latent_scale=cfg.data.latent_scale, prediction_type=cfg.model.prediction_type,
                                         caption_dropout=cfg.model.caption_dropout)

    def initial_state(self, params, buffers):
        return pretraining_state(self.optimizer.tx, self.cfg.seed, params, buffers)

    def update(self, model):
        return pretraining_update(split_model(model)[0], self.optimizer, self.objective, self.cfg.optimizer.ema_rate)


class LoRAPretraining(Pretraining):
    """LoRA fine-tuning with PixArt's loss: new adapters (the `lora:` section) on `model.init_from`, which stays
    frozen (in the compute dtype) and out of the checkpoints."""
    unsaved = ("frozen",)

    def model(self):
        lora = self.cfg.lora
        return add_lora(super().model(), list(lora.targets), lora.rank, lora.alpha, use_rslora=lora.use_rslora,
                        init=lora.init, seed=self.cfg.seed, dropout=lora.dropout)

    def networks(self, model, abstract=False):
        return split_adapted(model)[1:], sharding.variable_axes(model)

    def initial_state(self, adapters, params, buffers):
        return lora_state(self.optimizer.tx, self.cfg.seed, adapters, params, buffers,
                          DType(self.cfg.model.compute_dtype).jax)

    def update(self, model):
        return lora_update(split_adapted(model)[0], self.optimizer, self.objective)


def adapted_model(result):
    """The adapted PixArtTransformer of a LoRA run's result (its state's global arrays)."""
    state = result.state
    return nnx.merge(result.graphdef, state["params"], state["frozen"], state["buffers"])


def export_lora(result, directory, base=None):
    """Writes the trained adapter as a PEFT folder `directory` (base_model_name_or_path `base`). Every process
    gathers the adapters; process 0 writes. The base enters only as shapes (what the export reads of it), so the
    frozen weights are never gathered."""
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    state = {"params": multihost_utils.process_allgather(result.state["params"], tiled=True),
             "frozen": shapes(result.state["frozen"]), "buffers": shapes(result.state["buffers"])}
    if jax.process_index() == 0:
        save_lora(adapted_model(dataclasses.replace(result, state=state)), directory, base_model_name_or_path=base)


def program(cfg):
    """The program of a pre-training config: LoRAPretraining with a `lora:` section, else Pretraining."""
    return Pretraining(cfg) if cfg.lora is None else LoRAPretraining(cfg)


def train(cfg, examples=None):
    """Runs or resumes the pre-training `cfg` describes (`examples` replace its data source); loop.train's result.
    With a `lora:` section: LoRA fine-tuning, whose adapter a finished (not preempted) run writes to
    WORKDIR/lora."""
    result = loop.train(program(cfg), examples)
    if cfg.lora is not None and not result.preempted:
        export_lora(result, os.path.join(os.path.abspath(cfg.workdir), "lora"), cfg.model.init_from)
    return result
