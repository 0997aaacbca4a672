"""PCM train state and update (consistency.md §2.4-2.6, §3.4-3.5).

The state is a dict of global jax.Arrays: `step` (micro-steps done), `teacher` (frozen), `student` (trained),
`target` (EMA of the student; absent when the target is the stop-gradient student), `buffers` (y_embedding), `opt`
(AdamW of the student), `rng`; with the adversarial loss also `disc` (the discriminator heads) and `disc_opt` (their
own AdamW, pcm_adversarial.py). With LoRA the student and target are adapters on a `frozen` base, which with the
adapters off is the teacher (consistency_networks.py). Every network is placed by the logical axes its parameters
declare (FSDP shards each copy). The update runs in step.TrainStep (explicit shardings, donated state,
`fold_in(rng, step)`).
"""
import dataclasses
import enum
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixart_jax.pipelines.guidance import Caption, guided_forward
from pixart_jax.training.lcm_loss import Distance, lcm_guidance
from pixart_jax.training.lcm_step import micro_conditions, prediction_fn, unconditional_caption
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, drop_captions
from pixart_jax.training.pcm_adversarial import adversarial_update, critic_logits, draw_renoising
from pixart_jax.training.pcm_loss import pcm_loss, pcm_tables
from pixart_jax.training.step import Objective


class TeacherGuidance(enum.StrEnum):
    """How the teacher's solver step is guided (consistency.md §2.5)."""
    augmented = "augmented"   # ε_c + w (ε_c - ε_u), w ~ U[w_min, w_max]: a "small-CFG" student (sample with CFG 1-2)
    none = "none"             # ε_c only, captions dropped to y_embedding: a "normal-CFG" student (sample with CFG)


class PCMTarget(enum.StrEnum):
    """What the consistency target is computed with."""
    ema = "ema"           # an EMA of the student (LCD's choice; best for a full fine-tune, spec §4.4)
    student = "student"   # the current student under stop-gradient (the released LoRA scripts)


@dataclasses.dataclass(frozen=True)
class PCMSettings(Objective):
    """One PCM step (the `pcm:` config section's meaning, pixart_jax/training/pcm.py)."""
    num_ddim_timesteps: int = 40
    phases: int = 4
    guidance: TeacherGuidance = TeacherGuidance.augmented
    guidance_range: tuple = (3.0, 4.0)
    null_caption_prob: float = 0.1
    target: PCMTarget = PCMTarget.ema
    target_decay: float = 0.95
    loss_type: str = "huber"
    huber_c: float = 1e-3


def with_heads(state, heads, heads_tx):
    """The PCM `state` with the adversarial loss's discriminator heads (pure-dict parameters) and the state of their
    optimizer `heads_tx`."""
    return {**state, "disc": heads, "disc_opt": heads_tx.init(heads)}


class PCMInputs(NamedTuple):
    """One step's draws: x0 (latent_scale · posterior sample), noise, captions (dropped to y_embedding for guidance
    "none"), grid indices n and guidance scales w."""
    x0: jax.Array
    noise: jax.Array
    captions: jax.Array
    n: jax.Array
    w: jax.Array


def draw_inputs(settings, draw_tables, null, batch, keys):
    """PCMInputs from four keys; `null` is y_embedding."""
    x0, _, noise, captions = draw_training_inputs(keys[0], batch, draw_tables, 0.0, null, settings.latent_scale)
    size = x0.shape[0]
    if settings.guidance == TeacherGuidance.none and settings.null_caption_prob > 0:  # student, teacher and target
        captions = drop_captions(captions, null, keys[1], settings.null_caption_prob)
    n = jax.random.randint(keys[2], (size,), 0, settings.num_ddim_timesteps)
    w = jax.random.uniform(keys[3], (size,), jnp.float32, *settings.guidance_range)
    return PCMInputs(x0, noise, captions, n, w)


def guided_teacher(copies, settings, state, batch, inputs):
    """teacher(x, t): the frozen teacher's prediction, CFG-augmented with w (LCM form) or unguided."""
    teacher_fn = prediction_fn(copies.teacher(state))
    cond, micro = Caption(inputs.captions, batch["mask"]), micro_conditions(batch)

    def teacher(x, t):
        if settings.guidance == TeacherGuidance.none:
            return teacher_fn(x, t, *cond, **micro)
        uncond = Caption(*unconditional_caption(inputs.captions, batch["mask"], state["buffers"]["y_embedding"], None))
        out_uncond, out_cond = guided_forward(teacher_fn, x, t, cond, uncond, **micro)
        return lcm_guidance(out_cond, out_uncond, inputs.w)
    return teacher


def consistency_loss(copies, settings, tables, state, batch, inputs, student):
    """(L_PCM, (prediction, goal)) of the student parameters `student` (pcm_loss)."""
    cond, micro = Caption(inputs.captions, batch["mask"]), micro_conditions(batch)
    target = state["target"] if settings.target == PCMTarget.ema else state["student"]
    return pcm_loss(lambda x, t: prediction_fn(copies.model(state, student))(x, t, *cond, **micro),
                    guided_teacher(copies, settings, state, batch, inputs),
                    lambda x, t: prediction_fn(copies.model(state, target))(x, t, *cond, **micro),
                    tables, inputs.x0, inputs.noise, inputs.n, Distance(settings.loss_type, settings.huber_c),
                    settings.prediction_type)


def student_update(optimizer, settings, state, loss_fn):
    """(student, opt, target or None, metrics): the student's update by `loss_fn` (student -> (loss, {name:
    scalar})), then the EMA target (if kept) pulled towards it."""
    return optimizer.update(loss_fn, state["student"], state["opt"], state.get("target"), settings.target_decay,
                            state["step"], has_aux=True)


def with_student(settings, state, student, opt, target, **others):
    """`state` with the student's update (and the others: the heads') applied."""
    return dict(state, student=student, opt=opt, **others,
                **({"target": target} if settings.target == PCMTarget.ema else {}))


def pcm_update(copies, optimizer, settings: PCMSettings, adversarial=None):
    """The PCM update `(state, batch, key) -> (state, metrics)` of the networks `copies` (consistency_networks:
    FullCopies or AdapterCopies). Metrics: `loss` (the consistency loss L_PCM),
    `grad_norm` and `lr` of the network updated this step, and with `adversarial` (a pcm_adversarial.Adversarial)
    `adversarial` (L_D on discriminator steps, L_G on generator steps) and `discriminator_step` (1 or 0)."""
    tables = pcm_tables(settings.num_ddim_timesteps, settings.phases), diffusion_tables()
    return functools.partial(_update, copies, optimizer, settings, adversarial, tables)


def _update(copies, optimizer, settings, adversarial, tables, state, batch, key):
    tables, draw_tables = tables
    keys = jax.random.split(key, 7)
    inputs = draw_inputs(settings, draw_tables, state["buffers"]["y_embedding"], batch, keys[:4])
    consistency = functools.partial(consistency_loss, copies, settings, tables, state, batch, inputs)
    update_student = functools.partial(student_update, optimizer, settings, state)
    if adversarial is None:
        student, opt, target, metrics = update_student(lambda student: (consistency(student)[0], {}))
        return with_student(settings, state, student, opt, target), metrics
    teacher = copies.teacher(state)
    renoising = draw_renoising(tables, inputs.n, inputs.x0.shape, keys[4:7])
    critic = functools.partial(critic_logits, teacher, adversarial.heads, renoising.t_adv, batch, inputs.captions)
    student, opt, target, disc, disc_opt, metrics = adversarial_update(adversarial, tables, renoising, critic,
                                                                       consistency, update_student, state)
    return with_student(settings, state, student, opt, target, disc=disc, disc_opt=disc_opt), metrics
