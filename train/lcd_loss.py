"""Latent Consistency Distillation (PixArt-δ) as pure functions (consistency.md §1, §3.3; pixart.md §6.3).

Grid: N = 50 DDIM points τ_j = 20(j+1) - 1 = {19, …, 999}; a pair is (t_s, t_e) = (τ_j, max(τ_j - 20, 0)).
Teacher: one CFG DDIM step t_s -> t_e with the LCM guidance form ε_c + w(ε_c - ε_u). Student and EMA target are
consistency functions f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t). Loss: elementwise pseudo-Huber (or L2).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.schedule import PIXART_SCHEDULE

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


class LCDTables(NamedTuple):
    """float32 tables: a_t, σ_t over all T timesteps; grid timesteps τ_j and their pair ends over N points."""
    a: jnp.ndarray
    sigma: jnp.ndarray
    tau: jnp.ndarray
    tau_prev: jnp.ndarray


def lcd_tables(num_ddim_timesteps=50, schedule=PIXART_SCHEDULE):
    """Schedule and grid tables, computed in float64 and stored as float32 device arrays."""
    T = schedule.num_train_timesteps
    k = T // num_ddim_timesteps
    abar = schedule.alphas_cumprod()
    tau = np.arange(1, num_ddim_timesteps + 1) * k - 1
    return LCDTables(a=jnp.asarray(np.sqrt(abar), jnp.float32), sigma=jnp.asarray(np.sqrt(1 - abar), jnp.float32),
                     tau=jnp.asarray(tau, jnp.int32), tau_prev=jnp.asarray(np.maximum(tau - k, 0), jnp.int32))


def boundary_scalings(t):
    """(c_skip(t), c_out(t)) for integer DDPM timesteps t: σ_d² / ((10t)² + σ_d²) and 10t / √((10t)² + σ_d²)."""
    st = TIMESTEP_SCALING * jnp.asarray(t, jnp.float32)
    c_skip = SIGMA_DATA ** 2 / (st ** 2 + SIGMA_DATA ** 2)
    return c_skip, st / jnp.sqrt(st ** 2 + SIGMA_DATA ** 2)


def _per_sample(v):
    return v.reshape(-1, 1, 1, 1)


def x0_from_eps(tables, x, eps, t):
    """x̂_0 = (x - σ_t ε) / a_t, per-sample timesteps t (B,)."""
    return (x - _per_sample(tables.sigma[t]) * eps) / _per_sample(tables.a[t])


def consistency(tables, x, eps, t):
    """f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t); exactly x at t = 0."""
    c_skip, c_out = boundary_scalings(t)
    return _per_sample(c_skip) * x + _per_sample(c_out) * x0_from_eps(tables, x, eps, t)


def teacher_ddim_step(tables, x_s, eps_cond, eps_uncond, t_s, t_e, w):
    """One deterministic DDIM step t_s -> t_e with the guided ε̃ = ε_c + w (ε_c - ε_u) (w per sample)."""
    eps = eps_cond + _per_sample(w) * (eps_cond - eps_uncond)
    x0 = x0_from_eps(tables, x_s, eps, t_s)
    return _per_sample(tables.a[t_e]) * x0 + _per_sample(tables.sigma[t_e]) * eps


def distance(prediction, target, loss_type="huber", huber_c=1e-3):
    """Mean over all elements of the pseudo-Huber √(d² + c²) - c, or of d² for "l2"; computed in fp32."""
    d = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    if loss_type == "huber":
        return jnp.mean(jnp.sqrt(d * d + huber_c ** 2) - huber_c)
    if loss_type == "l2":
        return jnp.mean(d * d)
    raise ValueError(f"loss_type must be 'huber' or 'l2', got {loss_type!r}")


def lcd_loss(student_eps, teacher_eps, target_eps, tables, x0, noise, n, w, loss_type="huber", huber_c=1e-3):
    """The LCD loss of one batch (consistency.md §1.8).

    student_eps(x, t) -> ε (differentiated); teacher_eps(x, t) -> (ε_cond, ε_uncond); target_eps(x, t) -> ε;
    each returns the 4 ε channels for (B,) integer timesteps. x0: scaled latents (B, C, H, W); noise: ε of the
    same shape; n: (B,) grid indices in [0, N); w: (B,) guidance (LCM form). Teacher and target are
    stop-gradient.
    """
    t_s, t_e = tables.tau[n], tables.tau_prev[n]
    x_s = _per_sample(tables.a[t_s]) * x0 + _per_sample(tables.sigma[t_s]) * noise
    eps_c, eps_u = teacher_eps(x_s, t_s)
    x_e = jax.lax.stop_gradient(teacher_ddim_step(tables, x_s, eps_c, eps_u, t_s, t_e, w))
    target = jax.lax.stop_gradient(consistency(tables, x_e, target_eps(x_e, t_e), t_e))
    prediction = consistency(tables, x_s, student_eps(x_s, t_s), t_s)
    return distance(prediction, target, loss_type, huber_c)
