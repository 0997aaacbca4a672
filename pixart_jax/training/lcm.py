"""Latent consistency distillation (PixArt-δ), run by `python -m train.lcm CONFIG [key=value ...]`.

The teacher is `model.init_from` (a converted checkpoint, any layout load_transformer reads) or, without it, a
freshly initialised `model.preset` (the tiny config). Student and EMA target start as copies of it. The loop is
pixart_jax/training/loop.py's (checkpoints and exact resume, metrics.jsonl, tqdm, SIGTERM); the config is the
pre-training schema plus an `lcm:` section. A finished run exports the EMA target (what the reference ships;
`lcm.export: student` for the online weights) as a diffusers transformer to WORKDIR/export/transformer, with an
LCMScheduler config in WORKDIR/export/scheduler.

With a `lora:` section (LCM-LoRA, PixArt-alpha `train_scripts/train_pixart_lcm_lora.py`) the student is
`model.init_from` plus new LoRA adapters, the teacher that base with the adapters off and the EMA target an EMA of
the adapters (consistency_networks.AdapterCopies); checkpoints leave the base out, and a finished run writes the
exported adapter as a PEFT folder to WORKDIR/lora instead of a transformer.
"""
import dataclasses
import enum
import functools
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pixart_jax.pipelines.prompts import load_tokenizer, tokenize
from pixart_jax.samplers import LCM, save_scheduler_config
from pixart_jax.training import config as config_lib
from pixart_jax.training import loop
from pixart_jax.training.consistency_networks import AdapterCopies, FullCopies
from pixart_jax.training.lcm_loss import LossType
from pixart_jax.training.lcm_step import LCMSettings, lcm_update
from pixart_jax.training.lora_program import LoRAProgram, export_lora
from pixart_jax.training.program import Program
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.transformer import save_diffusers


class ExportWeights(enum.StrEnum):
    """The weights a finished distillation exports."""
    target = "target"      # the EMA target (what the reference ships)
    student = "student"    # the online weights


class LCMNullCaption(enum.StrEnum):
    """The teacher's unconditional branch."""
    y_embedding = "y_embedding"   # the model's null caption with each prompt's mask (PixArt-δ)
    t5 = "t5"                     # T5 of "" with its own one-token mask (diffusers' LCM-LoRA script)


@dataclasses.dataclass
class LCMConfig:
    num_ddim_timesteps: int = 50            # N: the DDIM grid {19, 39, ..., 999}, skip k = 1000 / N
    guidance: float = 4.5                   # fixed w, LCM form ε_c + w (ε_c - ε_u) (Imagen scale 1 + w)
    loss_type: LossType = LossType.huber    # pseudo-Huber or L2
    huber_c: float = 1.0e-3
    target_decay: float = 0.95              # EMA of the student, once per optimizer step
    export: ExportWeights = ExportWeights.target
    null_caption: LCMNullCaption = LCMNullCaption.y_embedding
    text_encoder: Optional[str] = None      # null_caption "t5": a T5 encoder folder (as extract_features takes)
    tokenizer: Optional[str] = None         # its tokenizer folder (spiece.model); default: text_encoder


@dataclasses.dataclass
class LCMTrainConfig(config_lib.TrainConfig):
    lcm: LCMConfig = dataclasses.field(default_factory=LCMConfig)


def _check(cfg):
    problems = []
    if cfg.lcm.num_ddim_timesteps < 1 or 1000 % cfg.lcm.num_ddim_timesteps:
        problems.append("lcm.num_ddim_timesteps must divide 1000")
    if cfg.lcm.null_caption == "t5" and not cfg.lcm.text_encoder:
        problems.append("lcm.null_caption 't5' needs lcm.text_encoder (a T5 folder)")
    return config_lib.check_program(cfg, problems, "LCD", lora=True)


load_config = functools.partial(config_lib.load_config, schema=LCMTrainConfig, validate=_check)


def empty_prompt(text_encoder, tokenizer):
    """(1, C) float32: the T5 encoding of the empty prompt "" (its one token, </s>), diffusers' LCM distillation's
    unconditional input; the step pads it to the caption length with masked positions."""
    ids, mask = tokenize(load_tokenizer(tokenizer), [""], 1)
    return np.asarray(load_text_encoder(text_encoder)(ids, mask)[0], np.float32)


class LCMDistillation(Program):
    """The LCD program: a teacher, a student and its EMA target, all starting as the model's weights."""
    copies = FullCopies   # where the state keeps them (consistency_networks.py)

    def __init__(self, cfg):
        super().__init__(cfg)
        lcm = cfg.lcm
        self.settings = LCMSettings(latent_scale=cfg.data.latent_scale, prediction_type=cfg.model.prediction_type,
                                    num_ddim_timesteps=lcm.num_ddim_timesteps, guidance=lcm.guidance,
                                    loss_type=lcm.loss_type, huber_c=lcm.huber_c, target_decay=lcm.target_decay,
                                    caption_dropout=cfg.model.caption_dropout)

    def initial_state(self, *networks):
        return self.copies.initial_state(self.optimizer.tx, self.cfg.seed, True, *networks)

    def update(self, model):
        """LCD's update; with `lcm.null_caption: t5` the T5 encoding of "" is computed here (loads T5)."""
        lcm, settings = self.cfg.lcm, self.settings
        if lcm.null_caption == "t5":
            settings = dataclasses.replace(settings, null_caption=empty_prompt(lcm.text_encoder,
                                                                               lcm.tokenizer or lcm.text_encoder))
        return lcm_update(self.copies.of(model), self.optimizer, settings)


class LoRALCMDistillation(LCMDistillation, LoRAProgram):
    """LCM-LoRA: the student and its EMA target are LoRA adapters on the frozen `model.init_from`, which with the
    adapters off is the teacher."""
    copies = AdapterCopies


def program(cfg):
    """The program of an LCD config: LoRALCMDistillation with a `lora:` section, else LCMDistillation."""
    return LCMDistillation(cfg) if cfg.lora is None else LoRALCMDistillation(cfg)


def export(result, cfg, which, sampler):
    """Writes the `which` weights ("target" or "student") of a finished run (loop.train's result of `cfg`): a
    diffusers transformer WORKDIR/export/transformer, or with `lora:` the adapter as a PEFT folder WORKDIR/lora;
    and `sampler` (the distilled model's: its training grid, PixArt's schedule) as
    WORKDIR/export/scheduler/scheduler_config.json. Every process gathers the weights; process 0 writes."""
    workdir = os.path.abspath(cfg.workdir)
    if cfg.lora is not None:
        export_lora(result, os.path.join(workdir, "lora"), cfg.model.init_from, which)
    else:
        params, buffers = multihost_utils.process_allgather((result.state[which], result.state["buffers"]),
                                                            tiled=True)
        if jax.process_index() == 0:
            save_diffusers(nnx.merge(result.graphdef, params, buffers), os.path.join(workdir, "export", "transformer"))
    if jax.process_index() == 0:
        save_scheduler_config(sampler, os.path.join(workdir, "export", "scheduler"))


def distill(cfg, examples=None):
    """Runs or resumes the distillation `cfg` describes; exports when it finishes (not when preempted). Returns
    loop.train's result."""
    result = loop.train(program(cfg), examples)
    if not result.preempted:
        export(result, cfg, cfg.lcm.export,
               LCM(original_inference_steps=cfg.lcm.num_ddim_timesteps, prediction_type=cfg.model.prediction_type))
    return result
