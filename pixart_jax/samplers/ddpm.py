"""Ancestral DDPM sampling with PixArt's learned variance (IDDPM: Nichol & Dhariwal 2021, arXiv
2102.09672; PixArt-alpha `diffusion/model/gaussian_diffusion.py` `p_sample`) as pure functions.

The model returns 2C channels: ε̂ and v ∈ [-1, 1], which interpolates the log-variance between the clipped
posterior variance β̃ and β: log σ² = frac·log β + (1-frac)·log β̃_clipped, frac = (v + 1)/2. With K steps the
schedule is respaced to K kept timesteps (IDDPM's `space_timesteps(T, "K")`), the model being called with the
original timestep; x_prev = posterior mean (with x̂_0, unclipped) + σ·z, without noise on the last step.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule


def respaced_timesteps(steps, num_train_timesteps):
    """IDDPM's kept timesteps for one section of `steps`, ascending: round(i·(T-1)/(steps-1)), the stride
    accumulated step by step in float64 and rounded half to even, as the repo does."""
    steps = check_steps(steps)
    if steps > num_train_timesteps:
        raise ValueError(f"number of steps {steps} exceeds num_train_timesteps {num_train_timesteps}")
    stride = (num_train_timesteps - 1) / (steps - 1) if steps > 1 else 1.0
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return np.array(kept, np.int64)


class DDPMTables(NamedTuple):
    """Per-step coefficients of the respaced process, in sampling order."""
    timestep: jnp.ndarray
    sqrt_recip_alpha: jnp.ndarray        # x̂_0 = √(1/ᾱ)·x - √(1/ᾱ - 1)·ε̂
    sqrt_recip_alpha_m1: jnp.ndarray
    mean_x0_coef: jnp.ndarray            # posterior mean = c1·x̂_0 + c2·x
    mean_x_coef: jnp.ndarray
    min_log_variance: jnp.ndarray        # log β̃ (clipped), log β: the ends of the learned range
    max_log_variance: jnp.ndarray
    noise_scale: jnp.ndarray             # 1, and 0 on the last step


@dataclasses.dataclass(frozen=True)
class LearnedVarianceDDPM(Sampler):
    """IDDPM ancestral sampler (the repo's `--sampling_algo iddpm`, 100 steps by default) for a model whose output
    stacks ε̂ and the variance interpolation v along `channel_axis`."""

    schedule: DDPMSchedule = PIXART_SCHEDULE
    channel_axis: int = 1

    def timesteps(self, steps):
        """The original timesteps the model is called with, descending."""
        return respaced_timesteps(steps, self.schedule.num_train_timesteps)[::-1]

    def tables(self, steps):
        """Per-step float32 coefficients of the respaced process (see `DDPMTables`), in sampling order."""
        kept = respaced_timesteps(steps, self.schedule.num_train_timesteps)
        acp = self.schedule.alphas_cumprod()[kept]
        acp_prev = np.append(1.0, acp[:-1])
        betas = 1 - acp / acp_prev
        posterior_variance = betas * (1 - acp_prev) / (1 - acp)
        # β̃_0 = 0 is replaced by β̃_1; with a single step there is no β̃_1, and that step adds no noise anyway.
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if steps > 1 else betas
        columns = dict(timestep=kept, sqrt_recip_alpha=np.sqrt(1 / acp), sqrt_recip_alpha_m1=np.sqrt(1 / acp - 1),
                       mean_x0_coef=betas * np.sqrt(acp_prev) / (1 - acp),
                       mean_x_coef=(1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp),
                       min_log_variance=np.log(clipped), max_log_variance=np.log(betas),
                       noise_scale=(np.arange(steps) > 0).astype(np.float64))
        return as_tables(DDPMTables, **{name: col[::-1] for name, col in columns.items()})

    def needs_noise(self, steps):
        return steps > 1

    def model_output_shape(self, x_shape):
        shape = list(x_shape)
        shape[self.channel_axis] *= 2
        return tuple(shape)

    def step(self, row, x: jax.Array, model_output: jax.Array, state=(), noise: jax.Array | None = None):
        """x_t -> (x_prev, x̂_0, state) from the 2C-channel model output; `noise` is z (None: the mean only)."""
        x32 = f32(x)
        eps, v = jnp.split(f32(model_output), 2, axis=self.channel_axis)
        x0 = row.sqrt_recip_alpha * x32 - row.sqrt_recip_alpha_m1 * eps
        mean = row.mean_x0_coef * x0 + row.mean_x_coef * x32
        if noise is None:
            return mean.astype(x.dtype), x0, state
        frac = (v + 1) / 2
        log_variance = frac * row.max_log_variance + (1 - frac) * row.min_log_variance
        x_prev = mean + row.noise_scale * jnp.exp(0.5 * log_variance) * f32(noise)
        return x_prev.astype(x.dtype), x0, state
