"""Trajectory Consistency Distillation's sampler (TCD, arXiv 2402.19159; consistency.md §2.7) as pure functions:
diffusers' `TCDScheduler`.

From x at timestep t, with t' the next timestep (0 after the last step) and γ ∈ [0, 1]:
    s = floor((1 - γ) t'),  x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂          (a DDIM jump to the intermediate s)
    x_t' = √(ᾱ_t'/ᾱ_s) x_s + √(1 - ᾱ_t'/ᾱ_s) z                     (fresh z; none on the last step)
γ = 0 is deterministic DDIM between the timesteps; γ = 1 jumps to s = 0 and re-noises fully (LCM-like). The last
step lands on ᾱ_0, not 1. Timesteps are LCMScheduler's: evenly spaced on the `original_inference_steps` grid.
"""
import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.phases import consistency_grid, evenly_spaced
from pixart_jax.samplers.prediction import check_prediction_type, denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule


class TCDTables(NamedTuple):
    """Per-step TCD coefficients, one entry per step."""
    timestep: jnp.ndarray
    sqrt_alpha: jnp.ndarray              # √ᾱ_t, √(1-ᾱ_t): x̂_0 and ε̂ from the model output
    sqrt_one_minus_alpha: jnp.ndarray
    sqrt_alpha_s: jnp.ndarray            # √ᾱ_s, √(1-ᾱ_s) of the intermediate s = floor((1-γ) t')
    sqrt_one_minus_alpha_s: jnp.ndarray
    keep: jnp.ndarray                    # √(ᾱ_t'/ᾱ_s); 1 on the last step and when γ = 0
    fresh: jnp.ndarray                   # √(1 - ᾱ_t'/ᾱ_s), the weight of the fresh noise; 0 there


@dataclasses.dataclass(frozen=True)
class TCD(Sampler):
    """TCD sampling with stochasticity `gamma` (diffusers' `eta` argument of `TCDScheduler.step`, whose default
    0.3 this takes; `PixArtPipeline` passes its own `eta`, default 0, as diffusers' pipelines do), for ε- or
    v-prediction models."""

    schedule: DDPMSchedule = PIXART_SCHEDULE
    original_inference_steps: int = 50
    gamma: float = 0.3
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma (eta) must be in [0, 1], got {self.gamma}")
        consistency_grid(self.schedule.num_train_timesteps, self.original_inference_steps)

    def timesteps(self, steps):
        """The integer timesteps the model is evaluated at, descending."""
        steps = check_steps(steps)
        return evenly_spaced(consistency_grid(self.schedule.num_train_timesteps, self.original_inference_steps),
                             steps)

    def tables(self, steps):
        """Per-step float32 coefficients (see `TCDTables`)."""
        ts = self.timesteps(steps)
        following = np.append(ts[1:], 0)
        # as diffusers: floor of (1 - γ) t' computed in float32
        s = np.floor(np.float32(1 - self.gamma) * following.astype(np.float32)).astype(np.int64)
        acp = self.schedule.alphas_cumprod()
        ratio = acp[following] / acp[s]
        stochastic = (self.gamma > 0) & (np.arange(len(ts)) < len(ts) - 1)
        return as_tables(TCDTables, timestep=ts, sqrt_alpha=np.sqrt(acp[ts]), sqrt_one_minus_alpha=np.sqrt(1 - acp[ts]),
                         sqrt_alpha_s=np.sqrt(acp[s]), sqrt_one_minus_alpha_s=np.sqrt(1 - acp[s]),
                         keep=np.where(stochastic, np.sqrt(ratio), 1.0),
                         fresh=np.where(stochastic, np.sqrt(1 - ratio), 0.0))

    def needs_noise(self, steps):
        return self.gamma > 0 and steps > 1

    def with_eta(self, eta):
        return dataclasses.replace(self, gamma=eta)

    def step(self, row, x, model_output, state=(), noise=None):
        """x_t -> (x_t', x_s, state): x_s is diffusers' `pred_noised_sample` (on the last step, the result)."""
        x0, eps = denoise(self.prediction_type, f32(x), f32(model_output), row.sqrt_alpha, row.sqrt_one_minus_alpha)
        x_s = row.sqrt_alpha_s * x0 + row.sqrt_one_minus_alpha_s * eps
        x_next = row.keep * x_s
        if noise is not None:
            x_next = x_next + row.fresh * f32(noise)
        return x_next.astype(x.dtype), x_s, state
