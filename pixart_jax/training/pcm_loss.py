"""Phased Consistency Models' distillation objective as pure functions (consistency.md §2.2-2.6, §3.4-3.5).

Grid: N points τ_j (PixArt: N = 40, τ = 24, 49, …, 999) split into M phases; index j's phase has lower edge s(j).
Student: the DDIM jump F_θ(x, t -> s) = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂ of its own prediction (boundary condition F(x, s -> s)
= x built in, no c_skip / c_out). Teacher: one DDIM step τ_j -> τ_{j-1} (0 for j = 0) with its (optionally guided)
prediction. Target: the teacher's point itself when it is the edge, else the stop-gradient target network's jump
from there to the same edge. Adversarial extension: the phase-edge prediction (fake) and the target (real) are
re-noised to t_adv ∈ [s, s + T/M) and scored by discriminator heads with hinge losses.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixart_jax.samplers.phases import phase_of_indices
from pixart_jax.samplers.schedule import PIXART_SCHEDULE
from pixart_jax.training.lcm_loss import Distance, ddim_jump, lcm_tables, per_sample


class PCMTables(NamedTuple):
    """float32 a_t, σ_t over all T timesteps; per grid index j: τ_j, its teacher step's end, its phase's edge and
    whether j is the edge index."""
    a: jnp.ndarray
    sigma: jnp.ndarray
    tau: jnp.ndarray
    tau_prev: jnp.ndarray
    edge: jnp.ndarray
    is_edge: jnp.ndarray
    adversarial_span: int  # T / M: the re-noising window above each edge


def pcm_tables(num_ddim_timesteps=40, phases=4, schedule=PIXART_SCHEDULE):
    """The tables of an M = `phases` split of the N = `num_ddim_timesteps` grid."""
    edge, is_edge = phase_of_indices(schedule.num_train_timesteps, num_ddim_timesteps, phases)
    return PCMTables(*lcm_tables(num_ddim_timesteps, schedule), edge=jnp.asarray(edge, jnp.int32),
                     is_edge=jnp.asarray(is_edge), adversarial_span=schedule.num_train_timesteps // phases)


def pcm_loss(student, teacher, target, tables, x0, noise, n, distance=Distance(), prediction_type="epsilon"):
    """The PCM consistency loss of one batch (consistency.md §2.4) and (prediction, goal) for the adversarial term.

    student(x, t) -> output (differentiated); teacher(x, t) -> the teacher's output, already guided (or not) as
    the distillation mode asks; target(x, t) -> output. Outputs are the latent channels of the prediction (ε, or v
    for "v_prediction") for (B,) integer timesteps. x0: scaled latents (B, C, H, W); noise: ε of that shape; n: (B,)
    grid indices in [0, N); `distance` a Distance. Teacher and target are stop-gradient.
    """
    t, t_e, edge = tables.tau[n], tables.tau_prev[n], tables.edge[n]
    x_t = per_sample(tables.a[t]) * x0 + per_sample(tables.sigma[t]) * noise
    x_e = jax.lax.stop_gradient(ddim_jump(tables, x_t, teacher(x_t, t), t, t_e, prediction_type))
    jumped = ddim_jump(tables, x_e, target(x_e, t_e), t_e, edge, prediction_type)
    goal = jax.lax.stop_gradient(jnp.where(per_sample(tables.is_edge[n]), x_e, jumped))
    prediction = ddim_jump(tables, x_t, student(x_t, t), t, edge, prediction_type)
    return distance(prediction, goal), (prediction, goal)


def adversarial_timesteps(key, tables, n):
    """t_adv ~ U{s, …, s + T/M - 1} above each sample's phase edge s (consistency.md §2.6)."""
    return tables.edge[n] + jax.random.randint(key, n.shape, 0, tables.adversarial_span)


def renoise(tables, x, edge, t_adv, noise):
    """x at the edge s pushed forward to t_adv: √(ᾱ_adv/ᾱ_s) x + √(1 - ᾱ_adv/ᾱ_s) ξ."""
    ratio = per_sample(tables.a[t_adv] / tables.a[edge]) ** 2
    return jnp.sqrt(ratio) * x + jnp.sqrt(1 - ratio) * noise


def hinge_discriminator_loss(fake_logits, real_logits):
    """(1/H) Σ_h [mean relu(1 + D_h(fake)) + mean relu(1 - D_h(real))]. Logits are stacked over the H heads on
    axis 0, every head's map the same size, so the mean over heads of per-head means is the mean of all."""
    return jnp.mean(jax.nn.relu(1 + fake_logits)) + jnp.mean(jax.nn.relu(1 - real_logits))


def hinge_generator_loss(fake_logits):
    """(1/H) Σ_h mean relu(1 - D_h(fake)) (the hinge form, not -D); logits stacked as above."""
    return jnp.mean(jax.nn.relu(1 - fake_logits))
