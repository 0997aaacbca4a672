"""PCM train state and the one jitted step (consistency.md §2.4-2.6, §3.4-3.5).

The state is a dict of global jax.Arrays: `step` (micro-steps done), `teacher` (frozen), `student` (trained),
`target` (EMA of the student; absent when the target is the stop-gradient student), `buffers` (y_embedding), `opt`
(AdamW of the student), `rng`; with the adversarial loss also `disc` (the discriminator heads) and `disc_opt` (their
own AdamW). Every network is placed by the logical axes its parameters declare (FSDP shards each copy). The step
reuses TrainStep's jit (explicit shardings, donated state) and draws from `fold_in(rng, step)`, so a resumed run
draws exactly what an uninterrupted one would. With the adversarial loss the optimizer steps alternate inside the
one jitted step: even ones update only the heads (hinge L_D), odd ones only the student (L_PCM + λ L_G).
"""
import dataclasses
import enum

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax import sharding
from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.pipelines.guidance import Caption, guided_forward
from pixart_jax.samplers.prediction import check_prediction_type
from pixart_jax.training.discriminator import DiscriminatorHeads
from pixart_jax.training.lcm_loss import lcm_guidance
from pixart_jax.training.lcm_step import prediction_fn, unconditional_caption
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, drop_captions
from pixart_jax.training.pcm_loss import (
    adversarial_timesteps,
    hinge_discriminator_loss,
    hinge_generator_loss,
    pcm_loss,
    pcm_tables,
    renoise,
)
from pixart_jax.training.step import TrainStep, abstract_state, init_state, optimizer_update, split_model


class TeacherGuidance(enum.StrEnum):
    """How the teacher's solver step is guided (consistency.md §2.5)."""
    augmented = "augmented"   # ε_c + w (ε_c - ε_u), w ~ U[w_min, w_max]: a "small-CFG" student (sample with CFG 1-2)
    none = "none"             # ε_c only, captions dropped to y_embedding: a "normal-CFG" student (sample with CFG)


class PCMTarget(enum.StrEnum):
    """What the consistency target is computed with."""
    ema = "ema"           # an EMA of the student (LCD's choice; best for a full fine-tune, spec §4.4)
    student = "student"   # the current student under stop-gradient (the released LoRA scripts)


@dataclasses.dataclass(frozen=True)
class Adversarial:
    """The adversarial consistency loss: heads (a DiscriminatorHeads), their optimizer and lr schedule, λ."""
    heads: DiscriminatorHeads
    tx: object
    schedule: object
    weight: float = 0.1


def _initial_pcm_state(ema_target, adversarial):
    def initial(tx, seed):
        def init(params, buffers):
            state = {"step": jnp.zeros((), jnp.int32), "teacher": params, "student": jax.tree.map(jnp.copy, params),
                     "buffers": buffers, "opt": tx.init(params), "rng": jax.random.PRNGKey(seed)}
            if ema_target:
                state["target"] = jax.tree.map(jnp.copy, params)
            if adversarial is not None:
                heads = nnx.to_pure_dict(nnx.state(adversarial.heads, nnx.Param))
                state["disc"], state["disc_opt"] = heads, adversarial.tx.init(heads)
            return state
        return init
    return initial


def _axes(model, adversarial):
    axes = sharding.variable_axes(model)
    if adversarial is not None:
        axes |= sharding.variable_axes(adversarial.heads)  # "heads.…": no clash with the transformer's paths
    return axes


def init_pcm_state(model, tx, seed, mesh, rules, *, ema_target=True, adversarial=None):
    """(state, shardings) of a PCM run: teacher, student (and target) start as the model's weights."""
    return init_state(model, tx, seed, mesh, rules, _initial_pcm_state(ema_target, adversarial),
                      _axes(model, adversarial))


def abstract_pcm_state(model, tx, seed, mesh, rules, *, ema_target=True, adversarial=None):
    """(ShapeDtypeStructs with shardings, shardings) of `init_pcm_state`'s state: what a checkpoint restores onto."""
    return abstract_state(model, tx, seed, mesh, rules, _initial_pcm_state(ema_target, adversarial),
                          _axes(model, adversarial))


class PCMStep(TrainStep):
    """The jitted PCM step `(state, batch) -> (state, metrics)`; the state is donated.

    Metrics: `loss` (the consistency loss L_PCM), `grad_norm` and `lr` of the network updated this step, and with
    the adversarial loss `adversarial` (L_D on discriminator steps, L_G on generator steps) and `discriminator_step`
    (1 or 0)."""

    def __init__(self, graphdef, tx, schedule, state_shardings, mesh, *, accum_steps=1, num_ddim_timesteps=40,
                 phases=4, guidance=TeacherGuidance.augmented, guidance_range=(3.0, 4.0), null_caption_prob=0.1,
                 target=PCMTarget.ema, target_decay=0.95, loss_type="huber", huber_c=1e-3,
                 latent_scale=LATENT_SCALE, prediction_type="epsilon", adversarial: Adversarial | None = None):
        check_prediction_type(prediction_type)
        self.traces = 0
        tables, draw_tables = pcm_tables(num_ddim_timesteps, phases), diffusion_tables()
        ema = target == PCMTarget.ema
        heads_def = None if adversarial is None else split_model(adversarial.heads)[0]

        def step(state, batch):
            self.traces += 1
            keys = jax.random.split(jax.random.fold_in(state["rng"], state["step"]), 7)
            buffers, null = state["buffers"], state["buffers"]["y_embedding"]
            x0, _, noise, captions = draw_training_inputs(keys[0], batch, draw_tables, 0.0, null, latent_scale)
            size = x0.shape[0]
            if guidance == TeacherGuidance.none and null_caption_prob > 0:  # for student, teacher and target alike
                captions = drop_captions(captions, null, keys[1], null_caption_prob)
            cond = Caption(captions, batch["mask"])
            micro = dict(resolution=batch["img_hw"], aspect_ratio=batch["aspect_ratio"])
            n = jax.random.randint(keys[2], (size,), 0, num_ddim_timesteps)
            w = jax.random.uniform(keys[3], (size,), jnp.float32, *guidance_range)
            teacher_fn = prediction_fn(graphdef, state["teacher"], buffers)

            def teacher(x, t):
                if guidance == TeacherGuidance.none:
                    return teacher_fn(x, t, *cond, **micro)
                uncond = Caption(*unconditional_caption(captions, batch["mask"], null, None))
                out_uncond, out_cond = guided_forward(teacher_fn, x, t, cond, uncond, **micro)
                return lcm_guidance(out_cond, out_uncond, w)

            target_params = state["target"] if ema else state["student"]

            def consistency(student):
                return pcm_loss(lambda x, t: prediction_fn(graphdef, student, buffers)(x, t, *cond, **micro), teacher,
                                lambda x, t: prediction_fn(graphdef, target_params, buffers)(x, t, *cond, **micro),
                                tables, x0, noise, n, loss_type, huber_c, prediction_type)

            def update_student(adversarial_loss=None):
                """The student's update by L_PCM (+ λ L_G); metrics: loss = L_PCM (+ adversarial = L_G)."""
                def loss_fn(student):
                    loss, (prediction, _) = consistency(student)
                    if adversarial_loss is None:
                        return loss, {}
                    adversarial_value = adversarial_loss(prediction)
                    return loss + adversarial.weight * adversarial_value, {"consistency": loss,
                                                                            "adversarial": adversarial_value}
                student, opt, new_target, metrics = optimizer_update(
                    tx, schedule, accum_steps, loss_fn, state["student"], state["opt"], state.get("target"),
                    target_decay, state["step"], has_aux=True)
                if adversarial_loss is not None:
                    metrics = dict(metrics, loss=metrics.pop("consistency"), discriminator_step=jnp.float32(0))
                return student, opt, new_target, metrics

            def with_student(student, opt, new_target, **others):
                return dict(state, step=state["step"] + 1, student=student, opt=opt, **others,
                            **({"target": new_target} if ema else {}))

            if adversarial is None:
                student, opt, new_target, metrics = update_student()
                return with_student(student, opt, new_target), metrics

            teacher_model = nnx.merge(graphdef, state["teacher"], buffers)
            grid = tuple(d // teacher_model.cfg.patch_size for d in x0.shape[2:])
            edge = tables.edge[n]
            t_adv = adversarial_timesteps(keys[4], tables, n)
            xi_fake, xi_real = (jax.random.normal(k, x0.shape, jnp.float32) for k in keys[5:7])

            def logits(disc, x):
                """The heads' logits (depth, B', h, w, 1) of latents x (B' = B or 2B) at t_adv, on the teacher's
                block outputs for the same captions and micro-conditions."""
                repeat = lambda a: jnp.tile(a, (x.shape[0] // size,) + (1,) * (a.ndim - 1))  # noqa: E731
                _, features = teacher_model.forward(x, repeat(t_adv), repeat(captions), repeat(batch["mask"]),
                                                    repeat(batch["img_hw"]), repeat(batch["aspect_ratio"]),
                                                    block_outputs=True)
                return nnx.merge(heads_def, disc)(features, grid)

            def discriminator_step(_):
                loss, (prediction, goal) = consistency(state["student"])
                fake = jax.lax.stop_gradient(renoise(tables, prediction, edge, t_adv, xi_fake))
                real = renoise(tables, goal, edge, t_adv, xi_real)

                def d_loss_fn(disc):
                    fake_logits, real_logits = jnp.split(logits(disc, jnp.concatenate([fake, real])), 2, axis=1)
                    return hinge_discriminator_loss(fake_logits, real_logits)

                disc, disc_opt, _, metrics = optimizer_update(adversarial.tx, adversarial.schedule, accum_steps,
                                                              d_loss_fn, state["disc"], state["disc_opt"], None,
                                                              0.0, state["step"])
                metrics = dict(metrics, loss=loss, adversarial=metrics["loss"], discriminator_step=jnp.float32(1))
                return state["student"], state["opt"], state.get("target"), disc, disc_opt, metrics

            def generator_step(_):
                frozen = jax.lax.stop_gradient(state["disc"])
                student, opt, new_target, metrics = update_student(
                    lambda prediction: hinge_generator_loss(logits(frozen, renoise(tables, prediction, edge, t_adv,
                                                                                   xi_fake))))
                return student, opt, new_target, state["disc"], state["disc_opt"], metrics

            student, opt, new_target, disc, disc_opt, metrics = jax.lax.cond(
                (state["step"] // accum_steps) % 2 == 0, discriminator_step, generator_step, None)
            return with_student(student, opt, new_target, disc=disc, disc_opt=disc_opt), metrics

        self._compile(step, state_shardings, mesh)
