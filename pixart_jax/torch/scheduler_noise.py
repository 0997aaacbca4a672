"""One diffusers scheduler step with fresh noise we give it (the JAX pipeline's draws) instead of the noise it would
draw from a torch.Generator.

DDIM and DPM-Solver take the noise as their `variance_noise` argument; SA-Solver's predictor takes it as the `noise`
argument of its `stochastic_adams_bashforth_update` (which `step` calls with its own draw, and whose noise the next
step's corrector reuses as `last_noise`). LCM and TCD have no such argument: their step's noise term is recomputed
from their documented re-noising formulas on the step's own denoised outputs (LCM: x' = √ᾱ' denoised + √(1-ᾱ') z;
TCD: x' = √(ᾱ'/ᾱ_s) x_s + √(1-ᾱ'/ᾱ_s) z, s = ⌊(1-γ) t'⌋), with the same float32 operations, so that with the
generator's own draw as `noise` each step equals diffusers' bit for bit.
"""
import contextlib
from typing import Callable

import torch


def step_with_noise(scheduler, model_output, t, sample, *, index: int, eta: float,
                    noise: Callable[[], torch.Tensor]):
    """scheduler.step(model_output, t, sample) at step `index` (0-based) with call stochasticity `eta` (DDIM's η,
    TCD's γ), as a tuple (prev_sample, ...), its fresh noise `noise()` (called only if the step injects noise).
    ValueError for a scheduler class whose noise this cannot give."""
    name = type(scheduler).__name__
    if name not in _STEPS:
        raise ValueError(f"{name}: the JAX noise cannot be injected into this scheduler's steps; use noise='torch' "
                         f"(a torch.Generator, as diffusers) or one of {sorted(_STEPS)}")
    return _STEPS[name](scheduler, model_output, t, sample, index, eta, noise)


def _ddim(scheduler, model_output, t, sample, index, eta, noise):
    given = noise() if eta > 0 else None
    return scheduler.step(model_output, t, sample, eta=eta, variance_noise=given, return_dict=False)


def _dpm_solver(scheduler, model_output, t, sample, index, eta, noise):
    given = noise() if scheduler.config.algorithm_type.startswith("sde") else None
    return scheduler.step(model_output, t, sample, variance_noise=given, return_dict=False)


def _is_last(scheduler, index):
    return index == len(scheduler.timesteps) - 1


def _lcm(scheduler, model_output, t, sample, index, eta, noise):
    _, denoised = scheduler.step(model_output, t, sample, generator=_spare(), return_dict=False)
    if _is_last(scheduler, index):  # the last step returns `denoised` itself
        return denoised, denoised
    alpha_prev = scheduler.alphas_cumprod[scheduler.timesteps[index + 1]]
    return alpha_prev.sqrt() * denoised + (1 - alpha_prev).sqrt() * noise(), denoised


def _tcd(scheduler, model_output, t, sample, index, eta, noise):
    prev, noised = scheduler.step(model_output, t, sample, eta=eta, generator=_spare(), return_dict=False)
    if eta <= 0 or _is_last(scheduler, index):  # no noise: prev is the step's result
        return prev, noised
    t_prev = scheduler.timesteps[index + 1]
    alpha_prev = scheduler.alphas_cumprod[t_prev]
    alpha_s = scheduler.alphas_cumprod[torch.floor((1 - eta) * t_prev).to(dtype=torch.long)]
    return (alpha_prev / alpha_s).sqrt() * noised + (1 - alpha_prev / alpha_s).sqrt() * noise(), noised


def _sa_solver(scheduler, model_output, t, sample, index, eta, noise):
    with _predictor_noise(scheduler, noise()):
        return scheduler.step(model_output, t, sample, generator=_spare(), return_dict=False)


@contextlib.contextmanager
def _predictor_noise(scheduler, noise):
    """SA-Solver's predictor update takes `noise` (stored as `last_noise` for the next corrector) in place of the
    step's own draw, for the steps run in this context."""
    update = scheduler.stochastic_adams_bashforth_update

    def with_noise(*args, **kwargs):
        scheduler.last_noise = noise
        return update(*args, **{**kwargs, "noise": noise})

    scheduler.stochastic_adams_bashforth_update = with_noise
    try:
        yield
    finally:
        del scheduler.stochastic_adams_bashforth_update


def _spare():
    """A generator for the draw a step makes and we replace (so the caller's global torch RNG is not consumed)."""
    return torch.Generator().manual_seed(0)


_STEPS = {"DDIMScheduler": _ddim, "DPMSolverMultistepScheduler": _dpm_solver, "LCMScheduler": _lcm,
          "TCDScheduler": _tcd, "SASolverScheduler": _sa_solver}
