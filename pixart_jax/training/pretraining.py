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

from pixart_jax.choices import DType
from pixart_jax.training import loop
from pixart_jax.training.lora_program import LoRAProgram, export_lora
from pixart_jax.training.lora_step import lora_state, lora_update, split_adapted
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.program import Program
from pixart_jax.training.state import common_state, split_model
from pixart_jax.training.step import Objective


@dataclasses.dataclass(frozen=True)
class PixArtObjective(Objective):
    """PixArt's loss, each caption replaced by y_embedding (its mask kept) with probability caption_dropout."""
    caption_dropout: float = 0.1

    def loss(self, model, batch, key, tables, null_caption):
        """(loss, {}): the batch-mean loss of `model` on `batch`, its noise, timesteps and caption dropout drawn from
        `key` (`tables`: loss.diffusion_tables(); `null_caption`: the model's y_embedding). Objectives that report
        more return their parts in the dict."""
        inputs = draw_training_inputs(key, batch, tables, self.caption_dropout, null_caption, self.latent_scale)
        return pixart_loss(model, batch, tables, *inputs, self.prediction_type), {}


def pretraining_state(tx, seed, params, buffers):
    """The pre-training state; the EMA starts equal to the (possibly loaded) weights."""
    return {**common_state(tx, seed, params, buffers), "params": params, "ema": jax.tree.map(jnp.copy, params)}


def pretraining_update(graphdef, optimizer, objective, ema_rate):
    """The update of `params` by `objective`'s loss (a PixArtObjective), then `ema` (rate `ema_rate`)."""
    tables = diffusion_tables()

    def update(state, batch, key):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["buffers"])
            return objective.loss(model, batch, key, tables, state["buffers"]["y_embedding"])

        params, opt, ema, metrics = optimizer.update(loss_fn, state["params"], state["opt"], state["ema"], ema_rate,
                                                     state["step"], has_aux=True)
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


class LoRAPretraining(Pretraining, LoRAProgram):
    """LoRA fine-tuning with PixArt's loss: new adapters (the `lora:` section) on `model.init_from`, which stays
    frozen (in the compute dtype) and out of the checkpoints."""

    def initial_state(self, adapters, params, buffers):
        return lora_state(self.optimizer.tx, self.cfg.seed, adapters, params, buffers,
                          DType(self.cfg.model.compute_dtype).jax)

    def update(self, model):
        return lora_update(split_adapted(model)[0], self.optimizer, self.objective)


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
