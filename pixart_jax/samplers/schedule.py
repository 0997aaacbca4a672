"""The discrete DDPM noise schedule every sampler is built on, ᾱ_t for t = 0 … T-1 (Ho et al. 2020, arXiv
2006.11239)."""
import dataclasses

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear")
DTYPES = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
    """β schedule of the training process. The defaults are PixArt's: linear β 1e-4 … 0.02 over 1000 steps.

    "scaled_linear" (linear in √β, the Stable Diffusion schedule and diffusers' LCMScheduler default) is accepted so
    that any diffusers scheduler config of these two kinds can be honoured.

    dtype "float64" computes ᾱ exactly (as the PixArt repo does); "float32" reproduces diffusers' schedulers, which
    hold β, 1-β and ᾱ in float32: ᾱ_0 = 0.9999 becomes 0.99989998, which moves 1-ᾱ near t = 0 by up to 1.7e-4
    relative (σ_0 by 8e-5) — invisible in images, but what step-level parity with diffusers needs.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    dtype: str = "float64"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")

    def betas(self):
        """β_t, float64, shape (T,)."""
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=np.float64)
        return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.num_train_timesteps,
                           dtype=np.float64) ** 2

    def alphas_cumprod(self):
        """ᾱ_t = Π_{s≤t} (1 - β_s) as float64, shape (T,) (dtype "float32": the float32 values diffusers uses)."""
        if self.dtype == "float64":
            return np.cumprod(1.0 - self.betas())
        alphas = np.float32(1.0) - self.betas().astype(np.float32)
        # torch's float32 cumprod accumulates in double and rounds each partial product to float32
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32).astype(np.float64)


PIXART_SCHEDULE = DDPMSchedule()
