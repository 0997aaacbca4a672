"""PCM's adversarial consistency loss (consistency.md §2.6, §3.5): discriminator heads on the frozen teacher's block
outputs score latents renoised from the phase edge to t_adv in the phase. The optimizer steps alternate inside the
one jitted step: even ones update only the heads (hinge L_D on fake = the student's phase-edge prediction, real =
the target's), odd ones only the student (L_PCM + λ L_G against the frozen heads). The heads' parameters are the
state's `disc`, their AdamW state `disc_opt`.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.training.discriminator import DiscriminatorHeads
from pixart_jax.training.optimizer import Optimizer
from pixart_jax.training.pcm_loss import (
    adversarial_timesteps,
    hinge_discriminator_loss,
    hinge_generator_loss,
    renoise,
)


@dataclasses.dataclass(frozen=True)
class Adversarial:
    """The adversarial loss of a PCM step: the heads' structure, their own optimizer (the student's accumulation)
    and λ, the weight of the generator's hinge loss."""
    heads: nnx.GraphDef
    optimizer: Optimizer
    weight: float = 0.1


def discriminator_heads(model, seed):
    """One head per block of `model` (a PixArtTransformer, or its nnx.eval_shape), seeded from the run's seed."""
    return DiscriminatorHeads(model.cfg.depth, model.cfg.hidden_size, model.dtype, rngs=nnx.Rngs(seed + 1))


class Renoising(NamedTuple):
    """Where one step renoises fake and real latents: the phase edge of each n, t_adv in its phase, the noises."""
    edge: jax.Array
    t_adv: jax.Array
    xi_fake: jax.Array
    xi_real: jax.Array

    def fake(self, tables, prediction):
        return renoise(tables, prediction, self.edge, self.t_adv, self.xi_fake)

    def real(self, tables, goal):
        return renoise(tables, goal, self.edge, self.t_adv, self.xi_real)


def draw_renoising(tables, n, shape, keys):
    """The Renoising of grid indices n for latents of `shape` from three keys."""
    xi_fake, xi_real = (jax.random.normal(k, shape, jnp.float32) for k in keys[1:3])
    return Renoising(tables.edge[n], adversarial_timesteps(keys[0], tables, n), xi_fake, xi_real)


def critic_logits(teacher, heads, t_adv, batch, captions, disc, x):
    """The heads' logits (depth, B', h, w, 1) of latents x (B' = B or 2B) at t_adv, on the teacher's block outputs
    for the same captions and micro-conditions. `teacher`: the merged frozen teacher; `heads`: the heads' graphdef,
    `disc` their parameters."""
    repeat = lambda a: jnp.tile(a, (x.shape[0] // captions.shape[0],) + (1,) * (a.ndim - 1))  # noqa: E731
    _, features = teacher.forward(x, repeat(t_adv), repeat(captions), repeat(batch["mask"]), repeat(batch["img_hw"]),
                                  repeat(batch["aspect_ratio"]), block_outputs=True)
    grid = tuple(d // teacher.cfg.patch_size for d in x.shape[2:])
    return nnx.merge(heads, disc)(features, grid)


def discriminator_step(adversarial, tables, renoising, critic, consistency, state):
    """The heads' update by hinge L_D; the student is not touched. Returns (student, opt, target, disc, disc_opt,
    metrics: loss = L_PCM, adversarial = L_D, discriminator_step = 1)."""
    loss, (prediction, goal) = consistency(state["student"])
    fake = jax.lax.stop_gradient(renoising.fake(tables, prediction))
    real = renoising.real(tables, goal)

    def d_loss_fn(disc):
        fake_logits, real_logits = jnp.split(critic(disc, jnp.concatenate([fake, real])), 2, axis=1)
        return hinge_discriminator_loss(fake_logits, real_logits)

    disc, disc_opt, _, metrics = adversarial.optimizer.update(d_loss_fn, state["disc"], state["disc_opt"], None, 0.0,
                                                              state["step"])
    metrics = dict(metrics, loss=loss, adversarial=metrics["loss"], discriminator_step=jnp.float32(1))
    return state["student"], state["opt"], state.get("target"), disc, disc_opt, metrics


def generator_step(adversarial, tables, renoising, critic, consistency, update_student, state):
    """The student's update by L_PCM + λ L_G against the frozen heads (`update_student(loss_fn)` applies it).
    Returns (student, opt, target, disc, disc_opt, metrics: loss = L_PCM, adversarial = L_G,
    discriminator_step = 0)."""
    frozen = jax.lax.stop_gradient(state["disc"])

    def loss_fn(student):
        loss, (prediction, _) = consistency(student)
        value = hinge_generator_loss(critic(frozen, renoising.fake(tables, prediction)))
        return loss + adversarial.weight * value, {"consistency": loss, "adversarial": value}

    student, opt, target, metrics = update_student(loss_fn)
    metrics = dict(metrics, loss=metrics.pop("consistency"), discriminator_step=jnp.float32(0))
    return student, opt, target, state["disc"], state["disc_opt"], metrics


def adversarial_update(adversarial, tables, renoising, critic, consistency, update_student, state):
    """A discriminator step on even optimizer steps, a generator step on odd ones (one jax.lax.cond).
    `consistency(student) -> (L_PCM, (prediction, goal))`; `critic(disc, x)`: critic_logits of this step."""
    def discriminator(_):
        return discriminator_step(adversarial, tables, renoising, critic, consistency, state)

    def generator(_):
        return generator_step(adversarial, tables, renoising, critic, consistency, update_student, state)

    return jax.lax.cond((state["step"] // adversarial.optimizer.accum_steps) % 2 == 0, discriminator, generator, None)
