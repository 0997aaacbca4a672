"""Latent Consistency Distillation (PixArt-δ) as pure functions (Luo et al. 2023, arXiv 2310.04378,
Algorithm 1; PixArt-δ, arXiv 2401.05252, §3; PixArt-alpha `train_scripts/train_pixart_lcm.py`).

Grid: N = 50 DDIM points τ_j = 20(j+1) - 1 = {19, …, 999}; a pair is (t_s, t_e) = (τ_j, max(τ_j - 20, 0)).
Teacher: one CFG DDIM step t_s -> t_e with the LCM guidance form ε_c + w(ε_c - ε_u). Student and EMA target are
consistency functions f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t). Loss: elementwise pseudo-Huber (or L2).
"""
import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.choices import choose
from pixart_jax.samplers.lcm import SIGMA_DATA
from pixart_jax.samplers.phases import consistency_grid
from pixart_jax.samplers.prediction import denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE

TIMESTEP_SCALING = 10.0


class LCMTables(NamedTuple):
    """float32 tables: a_t, σ_t over all T timesteps; grid timesteps τ_j and their pair ends over N points."""
    a: jnp.ndarray
    sigma: jnp.ndarray
    tau: jnp.ndarray
    tau_prev: jnp.ndarray


def lcm_tables(num_ddim_timesteps=50, schedule=PIXART_SCHEDULE):
    """Schedule and grid tables, computed in float64 and stored as float32 device arrays."""
    T = schedule.num_train_timesteps
    k = T // num_ddim_timesteps
    abar = schedule.alphas_cumprod()
    tau = consistency_grid(T, num_ddim_timesteps)
    return LCMTables(a=jnp.asarray(np.sqrt(abar), jnp.float32), sigma=jnp.asarray(np.sqrt(1 - abar), jnp.float32),
                     tau=jnp.asarray(tau, jnp.int32), tau_prev=jnp.asarray(np.maximum(tau - k, 0), jnp.int32))


def boundary_scalings(t):
    """(c_skip(t), c_out(t)) for integer DDPM timesteps t: σ_d² / ((10t)² + σ_d²) and 10t / √((10t)² + σ_d²)."""
    st = TIMESTEP_SCALING * jnp.asarray(t, jnp.float32)
    c_skip = SIGMA_DATA ** 2 / (st ** 2 + SIGMA_DATA ** 2)
    return c_skip, st / jnp.sqrt(st ** 2 + SIGMA_DATA ** 2)


def per_sample(v):
    return v.reshape(-1, 1, 1, 1)


def _denoise(tables, x, output, t, prediction_type):
    """(x̂_0, ε̂) from a model output (ε̂, or v̂ for v-prediction) at x, per-sample timesteps t (B,)."""
    return denoise(prediction_type, x, output, per_sample(tables.a[t]), per_sample(tables.sigma[t]))


def consistency(tables, x, output, t, prediction_type="epsilon"):
    """f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t); exactly x at t = 0."""
    c_skip, c_out = boundary_scalings(t)
    return per_sample(c_skip) * x + per_sample(c_out) * _denoise(tables, x, output, t, prediction_type)[0]


def ddim_jump(tables, x, output, t, t_next, prediction_type="epsilon"):
    """The deterministic DDIM jump t -> t_next along the output's (x̂_0, ε̂): √ᾱ_next x̂_0 + √(1-ᾱ_next) ε̂ (per-sample
    timesteps; the identity when t_next = t, up to rounding)."""
    x0, eps = _denoise(tables, x, output, t, prediction_type)
    return per_sample(tables.a[t_next]) * x0 + per_sample(tables.sigma[t_next]) * eps


def lcm_guidance(out_cond, out_uncond, w):
    """The LCM form of classifier-free guidance o_c + w (o_c - o_u), w per sample (Imagen scale 1 + w)."""
    return out_cond + per_sample(w) * (out_cond - out_uncond)


def teacher_ddim_step(tables, x_s, out_cond, out_uncond, t_s, t_e, w, prediction_type="epsilon"):
    """One deterministic DDIM step t_s -> t_e with the guided output o_c + w (o_c - o_u) (w per sample; for an
    ε-model ε̃ = ε_c + w (ε_c - ε_u))."""
    return ddim_jump(tables, x_s, lcm_guidance(out_cond, out_uncond, w), t_s, t_e, prediction_type)


class LossType(enum.StrEnum):
    huber = "huber"    # pseudo-Huber √(d² + c²) - c
    l2 = "l2"          # d²


@dataclasses.dataclass(frozen=True)
class Distance:
    """The consistency losses' distance: the mean over all elements of the pseudo-Huber √(d² + c²) - c (c =
    `huber_c`), or of d² for "l2"; computed in fp32."""
    loss_type: str = LossType.huber
    huber_c: float = 1e-3

    def __call__(self, prediction, target):
        d = prediction.astype(jnp.float32) - target.astype(jnp.float32)
        if choose(LossType, self.loss_type, "loss_type") == LossType.huber:
            return jnp.mean(jnp.sqrt(d * d + self.huber_c ** 2) - self.huber_c)
        return jnp.mean(d * d)


def lcm_loss(student, teacher, target, tables, x0, noise, n, w, distance=Distance(), prediction_type="epsilon"):
    """The LCD loss of one batch (consistency.md §1.8).

    student(x, t) -> output (differentiated); teacher(x, t) -> (output_cond, output_uncond); target(x, t) ->
    output; outputs are the latent channels of the prediction (ε, or v for `prediction_type` "v_prediction") for
    (B,) integer timesteps. x0: scaled latents (B, C, H, W); noise: ε of the same shape; n: (B,) grid indices in
    [0, N); w: (B,) guidance (LCM form); `distance` a Distance. Teacher and target are stop-gradient.
    """
    t_s, t_e = tables.tau[n], tables.tau_prev[n]
    x_s = per_sample(tables.a[t_s]) * x0 + per_sample(tables.sigma[t_s]) * noise
    out_c, out_u = teacher(x_s, t_s)
    x_e = jax.lax.stop_gradient(teacher_ddim_step(tables, x_s, out_c, out_u, t_s, t_e, w, prediction_type))
    goal = jax.lax.stop_gradient(consistency(tables, x_e, target(x_e, t_e), t_e, prediction_type))
    prediction = consistency(tables, x_s, student(x_s, t_s), t_s, prediction_type)
    return distance(prediction, goal)
