"""SA-Solver (stochastic Adams, Xue et al. 2023, arXiv 2309.05019; pixart.md §2.6) as pure functions: diffusers'
`SASolverScheduler`, PixArt's optional sampler.

On the grid of half log-SNRs λ_i = log α_i - log σ_i (the model's timesteps, then ᾱ_0), every step is a predictor
(stochastic Adams-Bashforth from i to i+1 over the model values m_i, m_{i-1}, …) and, from the second step on, first
a corrector (stochastic Adams-Moulton that redoes i-1 -> i with m_i included, reusing the previous step's noise):
    data (m = x̂_0):  x_t = e^{-τ²h} (σ_t/σ_s) x_s + Σ_k (1+τ²) σ_t e^{-τ²λ_t} b_k m_k + σ_t √(1 - e^{-2τ²h}) z
    noise (m = ε̂):   x_t = (α_t/α_s) x_s - Σ_k (1+τ²) α_t b_k m_k + τ σ_t √(e^{2h} - 1) z
with h = λ_t - λ_s and b_k = ∫_{λ_s}^{λ_t} ℓ_k(λ) e^{(1+τ²)λ} dλ (data) or ∫ ℓ_k(λ) e^{-λ} dλ (noise), ℓ_k the Lagrange
basis polynomial of node λ_k. Second-order data-prediction steps add diffusers' O(h³) correction to b_0 and b_1.
τ = 1 for timesteps in [200, 800] and 0 elsewhere (diffusers' default `tau_func`; the PixArt repo's η = 1 on
t ∈ [0.2, 0.8]). Every coefficient is computed in float64 on the host; a step is then a few axpys.
"""
import dataclasses
import enum
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from pixart_jax.choices import choose
from pixart_jax.samplers.base import Sampler, as_tables, check_steps, f32
from pixart_jax.samplers.dpm_solver import SPACINGS, solver_timesteps
from pixart_jax.samplers.prediction import check_prediction_type, denoise
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule

STOCHASTIC_TIMESTEPS = (200, 800)  # τ = 1 between these (inclusive), 0 outside
MAX_ORDER = 4


class SAAlgorithm(enum.StrEnum):
    data_prediction = "data_prediction"    # Adams steps over x̂_0 (PixArt's choice)
    noise_prediction = "noise_prediction"  # over ε̂


class SATables(NamedTuple):
    """Per-step SA-Solver coefficients. The window is the model values [m_i, m_{i-1}, …] (max order wide)."""
    timestep: jnp.ndarray
    alpha: jnp.ndarray            # α_i, σ_i of the current point: x̂_0 / ε̂ from the model output
    sigma: jnp.ndarray
    corrector_keep: jnp.ndarray   # 1 on the first step (no corrector: the input is kept), else 0
    corrector_sample: jnp.ndarray  # corrector: x_c = keep·x + sample·x_{i-1} + coefs·window + noise·z_{i-1}
    corrector_coefs: jnp.ndarray
    corrector_noise: jnp.ndarray
    predictor_sample: jnp.ndarray  # predictor: x_{i+1} = sample·x_c + coefs·window + noise·z_i
    predictor_coefs: jnp.ndarray
    predictor_noise: jnp.ndarray


def _exp_poly_integral(power, start, end, rate):
    """∫_start^end x^power e^{rate·x} dx in closed form (rate ≠ 0)."""
    def antiderivative(x):
        terms = sum((-1) ** i * math.factorial(power) / math.factorial(power - i) * x ** (power - i) / rate ** (i + 1)
                    for i in range(power + 1))
        return math.exp(rate * x) * terms
    return antiderivative(end) - antiderivative(start)


def _adams_coefficients(lam, alpha, sigma, start, end, nodes, tau, data_prediction):
    """(weight of x_start, weights of the model values at `nodes`, weight of the noise) of one stochastic Adams
    step from grid point `start` to `end` (float64)."""
    lam_s, lam_t = lam[start], lam[end]
    h = lam_t - lam_s
    node_lams = lam[list(nodes)]
    rate = 1 + tau ** 2 if data_prediction else -1.0
    order = len(nodes)
    coefs = []
    for k in range(order):
        others = np.delete(node_lams, k)
        basis = np.atleast_1d(np.poly(others)) / np.prod(node_lams[k] - others)  # ℓ_k, highest power first
        coefs.append(sum(c * _exp_poly_integral(order - 1 - j, lam_s, lam_t, rate) for j, c in enumerate(basis)))
    if data_prediction and order == 2:  # diffusers' few-step modification, O(h³)
        r = 1 + tau ** 2
        extra = (math.exp(r * lam_t) * (h ** 2 / 2 - (h * r - 1 + math.exp(-r * h)) / r ** 2)
                 / (node_lams[0] - node_lams[1]))
        coefs = [coefs[0] + extra, coefs[1] - extra]
    if data_prediction:
        weights = np.array(coefs) * (1 + tau ** 2) * sigma[end] * math.exp(-tau ** 2 * lam_t)
        return (math.exp(-tau ** 2 * h) * sigma[end] / sigma[start], weights,
                sigma[end] * math.sqrt(-math.expm1(-2 * tau ** 2 * h)))
    weights = -np.array(coefs) * (1 + tau ** 2) * alpha[end]
    return alpha[end] / alpha[start], weights, tau * sigma[end] * math.sqrt(math.expm1(2 * h))


@dataclasses.dataclass(frozen=True)
class SASolver(Sampler):
    """SA-Solver predictor-corrector, for ε- or v-prediction models; the defaults are SASolverScheduler's (PixArt:
    25 steps, orders 2/2, data prediction). Timesteps as DPMSolverMultistepScheduler's for the same spacing."""

    schedule: DDPMSchedule = PIXART_SCHEDULE
    predictor_order: int = 2
    corrector_order: int = 2
    algorithm_type: str = "data_prediction"
    lower_order_final: bool = True
    lambda_min_clipped: float = -float("inf")
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        choose(SAAlgorithm, self.algorithm_type, "algorithm_type")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")
        for name in ("predictor_order", "corrector_order"):
            if not 1 <= getattr(self, name) <= MAX_ORDER:
                raise ValueError(f"{name} must be in [1, {MAX_ORDER}], got {getattr(self, name)}")

    @property
    def window(self):
        """How many model values a step combines at most: max(predictor_order, corrector_order)."""
        return max(self.predictor_order, self.corrector_order)

    def timesteps(self, steps):
        """The integer timesteps the model is evaluated at, descending."""
        return solver_timesteps(check_steps(steps), self.schedule.alphas_cumprod(), self.timestep_spacing,
                                self.steps_offset, self.lambda_min_clipped)

    def taus(self, steps):
        """τ of each step's timestep: 1 within STOCHASTIC_TIMESTEPS, else 0."""
        ts = self.timesteps(steps)
        return ((ts >= STOCHASTIC_TIMESTEPS[0]) & (ts <= STOCHASTIC_TIMESTEPS[1])).astype(np.float64)

    def orders(self, steps):
        """(predictor order of each step, order of the corrector that the next step applies), with diffusers'
        warm-up (one more past value per step) and lower_order_final."""
        steps = check_steps(steps)
        i = np.arange(steps)
        done = np.minimum(i, max(self.predictor_order, self.corrector_order - 1))
        predictor, corrector = np.full(steps, self.predictor_order), np.full(steps, self.corrector_order)
        if self.lower_order_final:
            predictor, corrector = np.minimum(predictor, steps - i), np.minimum(corrector, steps - i + 1)
        return np.minimum(predictor, done + 1), np.minimum(corrector, done + 2)

    def tables(self, steps):
        """Per-step float32 coefficients (see `SATables`)."""
        ts = self.timesteps(steps)
        acp = self.schedule.alphas_cumprod()
        acp_grid = np.append(acp[ts], acp[0])
        alpha, sigma = np.sqrt(acp_grid), np.sqrt(1 - acp_grid)
        lam = np.log(alpha) - np.log(sigma)
        taus, (predictor_orders, corrector_orders) = self.taus(steps), self.orders(steps)
        data = self.algorithm_type == SAAlgorithm.data_prediction
        columns = {name: np.zeros(steps) for name in ("corrector_keep", "corrector_sample", "corrector_noise",
                                                      "predictor_sample", "predictor_noise")}
        columns.update(corrector_coefs=np.zeros((steps, self.window)), predictor_coefs=np.zeros((steps, self.window)))
        columns["corrector_keep"][0] = 1.0
        for i in range(steps):
            if i > 0:
                order = corrector_orders[i - 1]
                keep, weights, noise = _adams_coefficients(lam, alpha, sigma, i - 1, i, range(i, i - order, -1),
                                                           taus[i - 1], data)
                columns["corrector_sample"][i], columns["corrector_noise"][i] = keep, noise
                columns["corrector_coefs"][i, :order] = weights
            order = predictor_orders[i]
            keep, weights, noise = _adams_coefficients(lam, alpha, sigma, i, i + 1, range(i, i - order, -1), taus[i],
                                                       data)
            columns["predictor_sample"][i], columns["predictor_noise"][i] = keep, noise
            columns["predictor_coefs"][i, :order] = weights
        return as_tables(SATables, timestep=ts, alpha=alpha[:-1], sigma=sigma[:-1], **columns)

    def needs_noise(self, steps):
        return bool(self.taus(steps).any())

    def init_state(self, x):
        """(earlier model values [m_{i-1}, …] (window - 1 of them), the corrected sample x_{i-1} and the noise
        z_{i-1} of the previous step)."""
        zeros = jnp.zeros(x.shape, jnp.float32)
        return jnp.zeros((self.window - 1, *x.shape), jnp.float32), zeros, zeros

    def step(self, row, x, model_output, state, noise=None):
        """x_i -> (x_{i+1}, x̂_0, state): the corrector (from the second step) then the predictor."""
        history, last_sample, last_noise = state
        x32 = f32(x)
        x0, eps = denoise(self.prediction_type, x32, f32(model_output), row.alpha, row.sigma)
        value = x0 if self.algorithm_type == SAAlgorithm.data_prediction else eps
        window = jnp.concatenate([value[None], history])

        def combine(coefs):
            return jnp.tensordot(coefs, window, axes=1)

        corrected = (row.corrector_keep * x32 + row.corrector_sample * last_sample + combine(row.corrector_coefs)
                     + row.corrector_noise * last_noise)
        x_next = row.predictor_sample * corrected + combine(row.predictor_coefs)
        noise = jnp.zeros_like(x32) if noise is None else f32(noise)
        x_next = x_next + row.predictor_noise * noise
        return x_next.astype(x.dtype), x0, (window[:-1], corrected, noise)
