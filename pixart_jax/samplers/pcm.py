"""Phased Consistency Models' sampler (consistency.md §2.7): DDIM jumps between the phase edges a PCM was trained
on, deterministic by default (γ = 0), or TCD-style stochastic with γ > 0.

With M steps on an N-point grid the model is evaluated at the top τ_{N-1} and at the edges s_{M-1} … s_1 of the
M-phase split, each step jumping to the next edge along the model's own ε̂ (x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂), the last
to s_0 = 0 (ᾱ_0, as diffusers' DDIM with set_alpha_to_one=False). On N = 40 with M ∈ {1, 2, 4, 8} the edges are
DDIMScheduler's "trailing" timesteps and TCDScheduler's, so diffusers' TCDScheduler at γ = 0 samples a PCM exactly.
"""
import dataclasses

from pixart_jax.samplers.base import check_steps
from pixart_jax.samplers.phases import phase_timesteps
from pixart_jax.samplers.tcd import TCD


@dataclasses.dataclass(frozen=True)
class PCM(TCD):
    """The PCM sampler: `steps` = the number of phases M the model was distilled with, on the
    `original_inference_steps`-point grid (PixArt: N = 40); `gamma` as TCD's (0: deterministic)."""

    original_inference_steps: int = 40
    gamma: float = 0.0

    def timesteps(self, steps):
        """τ_{N-1}, then the phase edges s_{M-1} … s_1, descending."""
        return phase_timesteps(self.schedule.num_train_timesteps, self.original_inference_steps, check_steps(steps))
