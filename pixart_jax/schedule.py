"""The DDPM noise schedule PixArt is trained with (spec §2.1): linear betas 1e-4 ... 0.02 over 1000 steps."""
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def alphas_cumprod(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=1e-4, beta_end=0.02):
    """ᾱ_t = Π_{s<=t} (1 - β_s), float64, shape (num_train_timesteps,)."""
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)
