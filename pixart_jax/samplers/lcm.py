"""Latent Consistency Model multistep sampling (Luo et al. 2023, arXiv 2310.04378, §4.3;
diffusers `LCMScheduler`, PixArt-alpha `diffusion/lcm_scheduler.py`) as pure functions.

Each step maps x at timestep t to the consistency function's output
    denoised = c_out(t)·x̂_0 + c_skip(t)·x,  c_skip = σ_d² / ((s·t)² + σ_d²),  c_out = s·t / √((s·t)² + σ_d²)
(σ_d = 0.5, s = timestep_scaling = 10, t the integer timestep), then — unless it is the last step — re-noises it to
the next timestep with fresh Gaussian noise: x ← √ᾱ_t'·denoised + √(1-ᾱ_t')·z.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.phases import consistency_grid, evenly_spaced
from pixart_jax.samplers.prediction import check_prediction_type, denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule

SIGMA_DATA = 0.5
CONVENTIONS = ("diffusers", "repo")


def boundary_scalings(timesteps, timestep_scaling=10.0):
    """(c_skip, c_out) of the LCM consistency function at integer timesteps, float64."""
    st = np.asarray(timesteps, np.float64) * timestep_scaling
    return SIGMA_DATA ** 2 / (st ** 2 + SIGMA_DATA ** 2), st / np.sqrt(st ** 2 + SIGMA_DATA ** 2)


class LCMTables(NamedTuple):
    """Per-step LCM coefficients, one entry per step."""
    timestep: jnp.ndarray
    sqrt_alpha: jnp.ndarray            # √ᾱ_t, √(1-ᾱ_t): x̂_0 = (x - √(1-ᾱ_t) ε) / √ᾱ_t
    sqrt_one_minus_alpha: jnp.ndarray
    c_skip: jnp.ndarray
    c_out: jnp.ndarray
    sqrt_alpha_next: jnp.ndarray       # √ᾱ_t', √(1-ᾱ_t') of the next timestep; 1 and 0 on the last step
    sqrt_one_minus_alpha_next: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class LCM(Sampler):
    """LCM sampler (ε- or v-prediction: `prediction_type`) on the `original_inference_steps`-point distillation
    grid {k-1, 2k-1, …, T-1} (k = T // original_inference_steps; PixArt-LCM: 50 points, 19 … 999).

    convention="diffusers" (LCMScheduler): the grid reversed, indices floor(linspace(0, N, steps, endpoint=False)).
    convention="repo" (the PixArt repo's lcm_scheduler.py): the reversed grid with stride N // steps, first `steps`.
    They agree when `steps` divides N (4 steps: [999, 759, 499, 259] vs [999, 759, 519, 279]).
    """

    schedule: DDPMSchedule = PIXART_SCHEDULE
    convention: str = "diffusers"
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if not 1 <= self.original_inference_steps <= self.schedule.num_train_timesteps:
            raise ValueError(f"original_inference_steps must be in [1, {self.schedule.num_train_timesteps}], "
                             f"got {self.original_inference_steps}")

    def timesteps(self, steps):
        """The integer timesteps the model is evaluated at, descending."""
        steps = check_steps(steps)
        n = self.original_inference_steps
        if steps > n:
            raise ValueError(f"LCM sampling takes at most original_inference_steps = {n} steps, got {steps}")
        grid = consistency_grid(self.schedule.num_train_timesteps, n)
        if self.convention == "diffusers":
            return evenly_spaced(grid, steps)
        return grid[::-1][::n // steps][:steps]

    def tables(self, steps):
        """Per-step float32 coefficients (see `LCMTables`)."""
        ts = self.timesteps(steps)
        acp = self.schedule.alphas_cumprod()
        c_skip, c_out = boundary_scalings(ts, self.timestep_scaling)
        a_next = np.append(acp[ts[1:]], 1.0)  # the last step returns `denoised` itself
        return as_tables(LCMTables, timestep=ts, sqrt_alpha=np.sqrt(acp[ts]), sqrt_one_minus_alpha=np.sqrt(1 - acp[ts]),
                         c_skip=c_skip, c_out=c_out, sqrt_alpha_next=np.sqrt(a_next),
                         sqrt_one_minus_alpha_next=np.sqrt(1 - a_next))

    def needs_noise(self, steps):
        return steps > 1

    def step(self, row, x: jax.Array, model_output: jax.Array, state=(), noise: jax.Array | None = None):
        """x_t -> (x_next, denoised, state); `noise` is the fresh z for the re-noising (None: none added)."""
        x32 = f32(x)
        x0, _ = denoise(self.prediction_type, x32, f32(model_output), row.sqrt_alpha, row.sqrt_one_minus_alpha)
        if self.clip_sample:
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        denoised = row.c_out * x0 + row.c_skip * x32
        x_next = row.sqrt_alpha_next * denoised
        if noise is not None:
            x_next = x_next + row.sqrt_one_minus_alpha_next * f32(noise)
        return x_next.astype(x.dtype), denoised, state
