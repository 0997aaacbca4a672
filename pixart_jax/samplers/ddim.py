"""DDIM (η = 0 deterministic, η > 0 stochastic) as diffusers' `DDIMScheduler` computes it, as pure functions."""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.prediction import check_prediction_type, denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule

SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(steps, spacing, num_train_timesteps, steps_offset=0):
    """DDIMScheduler's `steps` integer timesteps, descending, for a timestep_spacing (Table 2 of arXiv 2305.08891)."""
    steps = check_steps(steps)
    if steps > num_train_timesteps:
        raise ValueError(f"number of steps {steps} exceeds num_train_timesteps {num_train_timesteps}")
    T = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(steps) * (T // steps))[::-1] + steps_offset
    elif spacing == "trailing":
        # i·(T/steps) from T down, as diffusers' arange does (for the few step counts where that float arange
        # yields one extra point, we keep exactly `steps`).
        ts = np.round(T - np.arange(steps) * (T / steps)) - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = ts.astype(np.int64)
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(f"timesteps {ts.tolist()} leave [0, {T - 1}] (steps_offset={steps_offset})")
    return ts


class DDIMTables(NamedTuple):
    """Per-step DDIM coefficients, one entry per step."""
    timestep: jnp.ndarray
    sqrt_alpha: jnp.ndarray            # √ᾱ_t
    sqrt_one_minus_alpha: jnp.ndarray  # √(1-ᾱ_t)
    sqrt_alpha_prev: jnp.ndarray       # √ᾱ_prev
    direction: jnp.ndarray             # √(1 - ᾱ_prev - σ²), the weight of ε in x_prev
    noise_std: jnp.ndarray             # σ = η √((1-ᾱ_prev)/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ_prev))


@dataclasses.dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM over a DDPM schedule, for ε- or v-prediction models (`prediction_type`).

    Follows DDIMScheduler: the "previous" timestep of t is always t - T // steps (whatever the spacing), and
    ᾱ_prev = 1 (set_alpha_to_one) or ᾱ_0 below 0. `clip_sample` clamps x̂_0 to ±clip_sample_range (diffusers'
    class default is True; here False, the right choice for latents — `from_scheduler_config` applies diffusers'
    defaults). `eta` > 0 adds σ·z per step (fresh noise from the sampling key or given noise).
    """

    schedule: DDPMSchedule = PIXART_SCHEDULE
    eta: float = 0.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")

    def timesteps(self, steps):
        """The integer timesteps the model is evaluated at, descending."""
        return spaced_timesteps(steps, self.timestep_spacing, self.schedule.num_train_timesteps, self.steps_offset)

    def tables(self, steps):
        """Per-step float32 coefficients (see `DDIMTables`)."""
        ts = self.timesteps(steps)
        acp = self.schedule.alphas_cumprod()
        final = 1.0 if self.set_alpha_to_one else acp[0]
        prev_t = ts - self.schedule.num_train_timesteps // len(ts)
        a_t = acp[ts]
        a_prev = np.where(prev_t >= 0, acp[np.maximum(prev_t, 0)], final)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = self.eta * np.sqrt(variance)
        return as_tables(DDIMTables, timestep=ts, sqrt_alpha=np.sqrt(a_t), sqrt_one_minus_alpha=np.sqrt(1 - a_t),
                         sqrt_alpha_prev=np.sqrt(a_prev),
                         direction=np.sqrt(np.maximum(1 - a_prev - std ** 2, 0)),  # ≥ 0 for η ≤ 1 up to rounding
                         noise_std=std)

    def needs_noise(self, steps):
        return self.eta > 0

    def with_eta(self, eta):
        return dataclasses.replace(self, eta=eta)

    def step(self, row, x: jax.Array, model_output: jax.Array, state=(), noise: jax.Array | None = None):
        """x_t -> (x_prev, x̂_0, state): x̂_0 re-noised to the previous level along ε̂, plus σ·noise when η > 0."""
        x32 = f32(x)
        x0, eps = denoise(self.prediction_type, x32, f32(model_output), row.sqrt_alpha, row.sqrt_one_minus_alpha)
        if self.clip_sample:
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        x_prev = row.sqrt_alpha_prev * x0 + row.direction * eps
        if noise is not None and self.eta > 0:
            x_prev = x_prev + row.noise_std * f32(noise)
        return x_prev.astype(x.dtype), x0, state
