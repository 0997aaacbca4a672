"""Samplers over the DDPM schedule: pure, jittable JAX functions and one-jit denoising loops.

Each sampler is a frozen (hashable) dataclass with `timesteps(steps)`, `tables(steps)`, per-step
`step(row, x, model_output, state, noise)` and `sample(model_fn, x_T, steps, key=..., noise=...)`.
Constructed directly they use PixArt's schedule computed in float64; `from_scheduler_config` reproduces a diffusers
scheduler, float32 schedule included (see `DDPMSchedule`).

    sampler = from_scheduler_config("PixArt-XL-2-1024-MS")           # DPMSolverMultistepScheduler -> DPM-Solver++
    run = jax.jit(lambda x_T: sampler.sample(model_fn, x_T, 20))     # model_fn(x, t) -> guided ε, shape of x
    latents = run(jax.random.normal(key, (1, 4, 128, 128)))
"""
from pixart_jax.samplers.base import Sampler, table_row
from pixart_jax.samplers.ddim import DDIM
from pixart_jax.samplers.ddpm import LearnedVarianceDDPM
from pixart_jax.samplers.dpm_solver import DPMSolverMultistep
from pixart_jax.samplers.lcm import LCM
from pixart_jax.samplers.pcm import PCM
from pixart_jax.samplers.registry import (
    SAMPLERS,
    SCHEDULER_CLASSES,
    SamplerName,
    from_scheduler_config,
    load_scheduler_config,
    make_sampler,
    sampler_name,
    save_scheduler_config,
    to_scheduler_config,
)
from pixart_jax.samplers.sa_solver import SASolver
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule
from pixart_jax.samplers.tcd import TCD

__all__ = ["DDIM", "DDPMSchedule", "DPMSolverMultistep", "LCM", "LearnedVarianceDDPM", "PCM", "PIXART_SCHEDULE",
           "SAMPLERS", "SASolver", "SCHEDULER_CLASSES", "Sampler", "SamplerName", "TCD", "from_scheduler_config",
           "load_scheduler_config", "make_sampler", "sampler_name", "save_scheduler_config", "table_row",
           "to_scheduler_config"]
