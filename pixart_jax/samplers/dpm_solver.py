"""Multistep DPM-Solver++ (data prediction), order ≤ 2, as pure functions: diffusers' `DPMSolverMultistepScheduler`
(the sampler the PixArt hub checkpoints ship with, spec §2.7) or the PixArt repo's continuous-time DPM-Solver (§2.5).

Both are one update per step from grid point s to t, with h = λ_t - λ_s, λ = log α - log σ, φ = expm1(-h):
  first order   x_t = (σ_t/σ_s)·x - α_t φ·x̂_0
  second order  x_t = (σ_t/σ_s)·x - α_t φ·x̂_0 + c·(x̂_0 - x̂_0,prev),  r = (λ_s - λ_prev)/h,
                c = -α_t φ / (2r)  ("midpoint", the repo's "dpmsolver")  or  α_t (φ/h + 1) / r  ("heun" / "taylor").
The conventions differ only in the grid (α, σ and the model's timestep at each point) and in which steps are
first-order; everything is folded into per-step coefficients computed in float64 on the host.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.prediction import check_prediction_type, denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule

CONVENTIONS = ("diffusers", "repo")
SPACINGS = ("linspace", "leading", "trailing")


def solver_timesteps(steps, alphas_cumprod, spacing, steps_offset=0, lambda_min_clipped=-float("inf")):
    """The integer timesteps of diffusers' multistep solvers (DPMSolverMultistepScheduler, SASolverScheduler),
    descending: `steps` points before the grid's end (t = 0, or ᾱ_0), timesteps whose half log-SNR λ falls below
    lambda_min_clipped skipped."""
    T = len(alphas_cumprod)
    if steps > T:
        raise ValueError(f"number of steps {steps} exceeds num_train_timesteps {T}")
    half_log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    last = T - int(np.sum(half_log_snr < lambda_min_clipped))
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(steps + 1) * (last // (steps + 1)))[::-1][:-1] + steps_offset
    else:
        ts = np.round(last - np.arange(steps) * (T / steps)) - 1
    ts = ts.astype(np.int64)
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(f"timesteps {ts.tolist()} leave [0, {T - 1}]")
    return ts


class DPMTables(NamedTuple):
    """Per-step DPM-Solver++ coefficients, one entry per step."""
    timestep: jnp.ndarray     # what the model sees (integers for diffusers, fractional for the repo)
    alpha: jnp.ndarray        # α_s, σ_s at the current grid point: x̂_0 = (x - σ_s ε) / α_s
    sigma: jnp.ndarray
    sample_coef: jnp.ndarray  # σ_t / σ_s
    x0_coef: jnp.ndarray      # -α_t φ
    diff_coef: jnp.ndarray    # c of the second-order term; 0 on first-order steps


@dataclasses.dataclass(frozen=True)
class DPMSolverMultistep(Sampler):
    """DPM-Solver++ multistep, for ε- or v-prediction models (`prediction_type`).

    convention="diffusers" reproduces DPMSolverMultistepScheduler; the defaults are its library defaults, which
    PixArt uses: order 2, midpoint, lower_order_final, timestep_spacing "linspace", final_sigmas_type "zero". Step 0
    is first-order; the last step is first-order when final_sigmas_type is "zero" (σ = 0: it returns x̂_0), or with
    lower_order_final and fewer than 15 steps, or with euler_at_final. Timesteps are integers (20 steps: 999, 949,
    …, 50).

    convention="repo" reproduces the PixArt repo's DPM-Solver (`DPMS(...).sample(order=2, skip_type="time_uniform",
    method="multistep", lower_order_final=True)`): continuous time t from 1 to 1/T with log α(t) interpolated
    piecewise-linearly, the model called at fractional timesteps (t - 1/T)·1000, ending at t = 1/T (σ ≈ 0.01);
    step 0 is first-order and, with lower_order_final and fewer than 10 steps, so is the last. It needs steps ≥
    solver_order as the repo does. timestep_spacing, steps_offset, final_sigmas_type, euler_at_final and
    lambda_min_clipped apply to the diffusers convention only.
    """

    schedule: DDPMSchedule = PIXART_SCHEDULE
    convention: str = "diffusers"
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        checks = (("convention", CONVENTIONS), ("solver_type", ("midpoint", "heun")),
                  ("final_sigmas_type", ("zero", "sigma_min")), ("timestep_spacing", SPACINGS))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2 (order 3 is not implemented), got {self.solver_order}")

    def timesteps(self, steps):
        """The model's timesteps, descending: int64 (diffusers) or fractional float64 (repo)."""
        return self.grid(steps)[0]

    def orders(self, steps):
        """The solver order (1 or 2) of each step."""
        steps = check_steps(steps)
        orders = np.full(steps, self.solver_order)
        orders[0] = 1
        if self.convention == "diffusers":
            last_first_order = (self.euler_at_final or self.final_sigmas_type == "zero"
                                or (self.lower_order_final and steps < 15))
        else:
            last_first_order = self.lower_order_final and steps < 10
        if last_first_order:
            orders[-1] = 1
        return orders

    def grid(self, steps):
        """(model timesteps (steps,), α (steps+1,), σ (steps+1,)): the points the solver moves through, float64."""
        steps = check_steps(steps)
        if self.convention == "repo":
            return self._repo_grid(steps)
        acp = self.schedule.alphas_cumprod()
        ts = solver_timesteps(steps, acp, self.timestep_spacing, self.steps_offset, self.lambda_min_clipped)
        a_last = 1.0 if self.final_sigmas_type == "zero" else acp[0]
        acp_grid = np.append(acp[ts], a_last)
        return ts, np.sqrt(acp_grid), np.sqrt(1 - acp_grid)

    def _repo_grid(self, steps):
        if steps < self.solver_order:
            raise ValueError(f"the repo's multistep DPM-Solver needs steps >= solver_order ({self.solver_order}), "
                             f"got {steps}")
        T = self.schedule.num_train_timesteps
        log_alpha_keys = 0.5 * np.cumsum(np.log1p(-self.schedule.betas()))
        t_keys = np.arange(1, T + 1) / T
        t = np.linspace(1.0, 1.0 / T, steps + 1)
        log_alpha = np.interp(t, t_keys, log_alpha_keys)  # t stays inside [1/T, 1]: no extrapolation
        model_t = (t[:-1] - 1.0 / T) * 1000.0  # the repo's discrete-time model input, fractional
        return model_t, np.exp(log_alpha), np.sqrt(-np.expm1(2 * log_alpha))

    def tables(self, steps):
        """Per-step float32 coefficients (see `DPMTables`)."""
        ts, alpha, sigma = self.grid(steps)
        orders = self.orders(steps)
        with np.errstate(divide="ignore", invalid="ignore"):  # σ = 0 at the end: λ = +inf, h = +inf, φ = -1
            lam = np.log(alpha) - np.log(sigma)
            h = lam[1:] - lam[:-1]
            phi = np.expm1(-h)
            r = np.concatenate([[np.nan], lam[1:-1] - lam[:-2]]) / h
            if self.solver_type == "midpoint":
                diff = -0.5 * alpha[1:] * phi / r
            else:
                diff = alpha[1:] * (phi / h + 1.0) / r
        diff = np.where(orders == 2, diff, 0.0)
        return as_tables(DPMTables, timestep=ts, alpha=alpha[:-1], sigma=sigma[:-1],
                         sample_coef=sigma[1:] / sigma[:-1], x0_coef=-alpha[1:] * phi, diff_coef=diff)

    def init_state(self, x):
        """The previous step's x̂_0 (unused by the first step, which is first-order)."""
        return jnp.zeros(x.shape, jnp.float32)

    def step(self, row, x: jax.Array, model_output: jax.Array, prev_x0: jax.Array, noise: jax.Array | None = None):
        """x_s -> (x_t, x̂_0, new state = x̂_0) from the model's prediction and the previous step's x̂_0."""
        x32 = f32(x)
        x0, _ = denoise(self.prediction_type, x32, f32(model_output), row.alpha, row.sigma)
        x_next = row.sample_coef * x32 + row.x0_coef * x0 + row.diff_coef * (x0 - prev_x0)
        return x_next.astype(x.dtype), x0, x0
