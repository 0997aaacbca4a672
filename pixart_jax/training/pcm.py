"""Phased Consistency Models for PixArt, run by `python -m train.pcm CONFIG [key=value ...]` (consistency.md §2).

The teacher is `model.init_from` (any layout load_transformer reads) or a freshly initialised `model.preset`;
student (and EMA target) start as copies of it. The loop is pixart_jax/training/loop.py's (checkpoints and exact
resume, metrics.jsonl, tqdm, SIGTERM); the config is the pre-training schema plus a `pcm:` section. No PCM recipe
for PixArt was released: the defaults are the spec's suggestions (§2.9): N = 40 (the edges of M ∈ {1, 2, 4, 8} are
then DDIM-trailing timesteps), M = 4, CFG-augmented teacher with w ~ U[3, 4], EMA target 0.95, pseudo-Huber 1e-3.
A finished run exports the EMA target (`pcm.export: student` for the online weights) as a diffusers transformer to
WORKDIR/export/transformer with a scheduler config that samples the trained phase edges with M steps
(WORKDIR/export/scheduler: a TCDScheduler config diffusers samples the same way at eta 0; ours reads it as "pcm").

With a `lora:` section (PCM-LoRA, as PCM's released weights) the student is `model.init_from` plus new LoRA
adapters, the teacher that base with the adapters off and the EMA target an EMA of the adapters
(consistency_networks.AdapterCopies; the adversarial heads read the adapter-off base's features); checkpoints leave
the base out, and a finished run writes the exported adapter as a PEFT folder to WORKDIR/lora instead of a
transformer.
"""
import dataclasses
import functools

from flax import nnx

from pixart_jax import sharding
from pixart_jax.samplers import PCM
from pixart_jax.training import config as config_lib
from pixart_jax.training import loop
from pixart_jax.training.consistency_networks import AdapterCopies, FullCopies
from pixart_jax.training.lcm import ExportWeights, export
from pixart_jax.training.lcm_loss import LossType
from pixart_jax.training.lora_program import LoRAProgram
from pixart_jax.training.optimizer import make_optimizer
from pixart_jax.training.pcm_adversarial import Adversarial, discriminator_heads
from pixart_jax.training.pcm_step import PCMSettings, PCMTarget, TeacherGuidance, pcm_update, with_heads
from pixart_jax.training.program import Program


@dataclasses.dataclass
class DiscriminatorOptimizerConfig:
    """AdamW of the discriminator heads (constant lr; the released PCM scripts' values)."""
    lr: float = 1.0e-5
    b1: float = 0.0
    b2: float = 0.999
    eps: float = 1.0e-8
    weight_decay: float = 1.0e-3
    grad_clip: float = 1.0


@dataclasses.dataclass
class PCMConfig:
    num_ddim_timesteps: int = 40            # N: the grid {24, 49, ..., 999}, one teacher step = 1000 / N
    phases: int = 4                         # M: the student samples with M deterministic steps
    guidance: TeacherGuidance = TeacherGuidance.augmented
    guidance_min: float = 3.0               # augmented: w ~ U[guidance_min, guidance_max], LCM form ε_c + w(ε_c - ε_u)
    guidance_max: float = 4.0
    null_caption_prob: float = 0.1          # guidance "none" only: captions -> y_embedding (their mask kept)
    target: PCMTarget = PCMTarget.ema
    target_decay: float = 0.95              # the EMA target, once per optimizer step
    loss_type: LossType = LossType.huber
    huber_c: float = 1.0e-3
    adversarial: bool = False               # the adversarial consistency loss (heads on every block's output)
    adversarial_weight: float = 0.1         # λ of the generator's hinge loss
    discriminator: DiscriminatorOptimizerConfig = dataclasses.field(default_factory=DiscriminatorOptimizerConfig)
    export: ExportWeights = ExportWeights.target


@dataclasses.dataclass
class PCMTrainConfig(config_lib.TrainConfig):
    pcm: PCMConfig = dataclasses.field(default_factory=PCMConfig)


def _check(cfg):
    pcm, problems = cfg.pcm, []
    if pcm.num_ddim_timesteps < 1 or 1000 % pcm.num_ddim_timesteps:
        problems.append("pcm.num_ddim_timesteps must divide 1000")
    elif not 1 <= pcm.phases <= pcm.num_ddim_timesteps:
        problems.append(f"pcm.phases must be in [1, pcm.num_ddim_timesteps = {pcm.num_ddim_timesteps}]")
    if not pcm.guidance_min <= pcm.guidance_max:
        problems.append("pcm.guidance_min must be <= pcm.guidance_max")
    if pcm.export == ExportWeights.target and pcm.target != PCMTarget.ema:
        problems.append("pcm.export 'target' needs pcm.target 'ema' (the stop-gradient student has no copy): "
                        "set pcm.export=student")
    if cfg.model.caption_dropout:
        problems.append("model.caption_dropout must be 0: PCM drops captions with pcm.null_caption_prob "
                        "(guidance 'none')")
    return config_lib.check_program(cfg, problems, "PCM", lora=True)


load_config = functools.partial(config_lib.load_config, schema=PCMTrainConfig, validate=_check)


class PCMDistillation(Program):
    """The PCM program: teacher, student (and EMA target) from the model's weights; with `pcm.adversarial` also
    discriminator heads (one per block, seeded from seed + 1) with their own AdamW."""
    copies = FullCopies   # where the state keeps teacher, student and target (consistency_networks.py)

    def __init__(self, cfg):
        super().__init__(cfg)
        pcm = cfg.pcm
        self.settings = PCMSettings(
            latent_scale=cfg.data.latent_scale, prediction_type=cfg.model.prediction_type,
            num_ddim_timesteps=pcm.num_ddim_timesteps, phases=pcm.phases, guidance=pcm.guidance,
            guidance_range=(pcm.guidance_min, pcm.guidance_max), null_caption_prob=pcm.null_caption_prob,
            target=pcm.target, target_decay=pcm.target_decay, loss_type=pcm.loss_type, huber_c=pcm.huber_c)
        disc = pcm.discriminator
        self.heads_optimizer = make_optimizer(config_lib.OptimizerConfig(
            lr=disc.lr, sqrt_lr_scaling=False, weight_decay=disc.weight_decay, eps=disc.eps, b1=disc.b1, b2=disc.b2,
            grad_clip=disc.grad_clip, warmup_steps=0, grad_accum_steps=cfg.optimizer.grad_accum_steps),
            cfg.data.batch_size)

    def networks(self, model, abstract=False):
        """The model's parameters and buffers, and with the adversarial loss the heads' parameters."""
        networks, axes = super().networks(model)
        if not self.cfg.pcm.adversarial:
            return networks, axes
        make = functools.partial(discriminator_heads, model, self.cfg.seed)
        heads = nnx.eval_shape(make) if abstract else make()
        # the heads' paths ("heads.…") do not clash with the transformer's
        return (*networks, nnx.to_pure_dict(nnx.state(heads, nnx.Param))), axes | sharding.variable_axes(heads)

    def initial_state(self, *networks):
        """From `networks` and, with the adversarial loss, the heads' parameters after them."""
        adversarial = self.cfg.pcm.adversarial
        state = self.copies.initial_state(self.optimizer.tx, self.cfg.seed, self.settings.target == PCMTarget.ema,
                                          *(networks[:-1] if adversarial else networks))
        return with_heads(state, networks[-1], self.heads_optimizer.tx) if adversarial else state

    def update(self, model):
        adversarial = None
        if self.cfg.pcm.adversarial:
            heads = nnx.graphdef(nnx.eval_shape(functools.partial(discriminator_heads, model, self.cfg.seed)))
            adversarial = Adversarial(heads, self.heads_optimizer, self.cfg.pcm.adversarial_weight)
        return pcm_update(self.copies.of(model), self.optimizer, self.settings, adversarial)


class LoRAPCMDistillation(PCMDistillation, LoRAProgram):
    """PCM-LoRA: the student (and its EMA target) are LoRA adapters on the frozen `model.init_from`, which with
    the adapters off is the teacher (and the adversarial heads' feature extractor)."""
    copies = AdapterCopies


def program(cfg):
    """The program of a PCM config: LoRAPCMDistillation with a `lora:` section, else PCMDistillation."""
    return PCMDistillation(cfg) if cfg.lora is None else LoRAPCMDistillation(cfg)


def exported_sampler(cfg):
    """The sampler of the distilled model: phase-edge jumps on its training grid (sampled with M steps)."""
    return PCM(original_inference_steps=cfg.pcm.num_ddim_timesteps, prediction_type=cfg.model.prediction_type,
               phases=cfg.pcm.phases)


def distill(cfg, examples=None):
    """Runs or resumes the PCM distillation `cfg` describes; exports when it finishes (not when preempted).
    Returns loop.train's result."""
    result = loop.train(program(cfg), examples)
    if not result.preempted:
        export(result, cfg, cfg.pcm.export, exported_sampler(cfg))
    return result
