"""The PixArt training objective: ε-MSE plus the learned-variance variational bound (Nichol & Dhariwal 2021,
arXiv 2102.09672, §3.1; PixArt-alpha `diffusion/model/gaussian_diffusion.py` `training_losses`).

Pure functions over JAX arrays. Schedule tables are computed in float64 NumPy once and gathered per sample as
float32, as the reference does. Latents `x0` here are already scaled (x0 = 0.18215 · z).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.samplers.prediction import denoise, training_target
from pixart_jax.samplers.schedule import PIXART_SCHEDULE

LN2 = float(np.log(2.0))


class DiffusionTables(NamedTuple):
    """Per-timestep coefficients (T,) of the forward process and of the posterior q(x_{t-1} | x_t, x_0)."""
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_mean_coef1: np.ndarray          # on x_0
    posterior_mean_coef2: np.ndarray          # on x_t
    posterior_log_variance_clipped: np.ndarray
    log_betas: np.ndarray

    @property
    def num_timesteps(self):
        return len(self.log_betas)


def diffusion_tables(schedule=PIXART_SCHEDULE):
    """The float64 tables of `schedule` (a pixart_jax DDPMSchedule)."""
    betas = schedule.betas()
    ac = schedule.alphas_cumprod()
    ac_prev = np.append(1.0, ac[:-1])
    posterior_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return DiffusionTables(
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        # β̃_0 = 0: its log is replaced by log β̃_1
        posterior_log_variance_clipped=np.log(np.append(posterior_var[1], posterior_var[1:])),
        log_betas=np.log(betas),
    )


def _gather(table, t, ndim):
    """table[t] as float32, shaped (B, 1, ..., 1) to broadcast against an ndim-dimensional batch."""
    return jnp.asarray(table, jnp.float32)[t].reshape((-1,) + (1,) * (ndim - 1))


def q_sample(tables, x0, t, noise):
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
    return (_gather(tables.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + _gather(tables.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def _mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the approximation the reference uses."""
    return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of data in [-1, 1] quantised to 256 bins under N(means, e^{2 log_scales}); edge bins one-sided."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms(tables, model_eps, model_var, x0, x_t, t):
    """The variational-bound term per sample, in bits: KL(q(x_{t-1}|x_t,x_0) ‖ p_θ) for t > 0, the decoder's
    negative discretised log-likelihood of x_0 for t = 0. `model_eps` should be stop-gradient (only the variance
    is trained by this term); `model_var` (channels 4-7, in [-1, 1]) interpolates log β and log β̃."""
    nd = x0.ndim
    coef1 = _gather(tables.posterior_mean_coef1, t, nd)
    coef2 = _gather(tables.posterior_mean_coef2, t, nd)
    min_log = _gather(tables.posterior_log_variance_clipped, t, nd)
    max_log = _gather(tables.log_betas, t, nd)
    true_mean = coef1 * x0 + coef2 * x_t
    x0_pred = (_gather(tables.sqrt_recip_alphas_cumprod, t, nd) * x_t
               - _gather(tables.sqrt_recipm1_alphas_cumprod, t, nd) * model_eps)
    model_mean = coef1 * x0_pred + coef2 * x_t
    frac = (model_var + 1.0) / 2.0
    model_log_var = frac * max_log + (1.0 - frac) * min_log
    kl = _mean_flat(normal_kl(true_mean, min_log, model_mean, model_log_var)) / LN2
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / LN2
    return jnp.where(t == 0, nll, kl)


def diffusion_loss(tables, model_output, x0, x_t, t, noise, prediction_type="epsilon"):
    """Per-sample loss (B,) = mean (target - prediction)² over channels 0-3 (target ε, or v = α ε - σ x_0 for
    v-prediction) + the VB term of the learned variance (4-7), which sees the ε the prediction implies."""
    channels = x0.shape[1]
    model_output = model_output.astype(jnp.float32)
    prediction, var = model_output[:, :channels], model_output[:, channels:2 * channels]
    alpha = _gather(tables.sqrt_alphas_cumprod, t, x0.ndim)
    sigma = _gather(tables.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    mse = _mean_flat(jnp.square(training_target(prediction_type, x0, noise, alpha, sigma) - prediction))
    _, eps = denoise(prediction_type, x_t, jax.lax.stop_gradient(prediction), alpha, sigma)
    return mse + vb_terms(tables, eps, var, x0, x_t, t)


def drop_captions(captions, null_caption, key, prob):
    """Replaces each sample's whole caption (B, L, C) by `null_caption` (L, C) with probability `prob`. The
    attention mask is left to the caller unchanged: the reference sees the null caption through the real mask."""
    drop = jax.random.bernoulli(key, prob, (captions.shape[0], 1, 1))
    return jnp.where(drop, null_caption[None].astype(captions.dtype), captions)


def draw_training_inputs(key, batch, tables, caption_dropout, null_caption, latent_scale=LATENT_SCALE):
    """From one key: x0 = latent_scale · (mean + std · N(0, I)) (a fresh VAE posterior sample), t ~ U{0..T-1},
    ε ~ N(0, I) and the captions after dropout. Draws are sharding-independent (partitionable threefry)."""
    k_z, k_t, k_noise, k_drop = jax.random.split(key, 4)
    mean = jnp.asarray(batch["mean"], jnp.float32)
    z = mean + jnp.asarray(batch["std"], jnp.float32) * jax.random.normal(k_z, mean.shape, jnp.float32)
    t = jax.random.randint(k_t, (mean.shape[0],), 0, tables.num_timesteps)
    noise = jax.random.normal(k_noise, mean.shape, jnp.float32)
    captions = jnp.asarray(batch["caption"], jnp.float32)
    if caption_dropout > 0:
        captions = drop_captions(captions, null_caption, k_drop, caption_dropout)
    return latent_scale * z, t, noise, captions


def pixart_sample_losses(model, batch, tables, x0, t, noise, captions, prediction_type="epsilon"):
    """The per-sample losses (B,) of `model` (a PixArtTransformer) for given x0, timesteps, noise and captions;
    micro-conditions (`img_hw`, `aspect_ratio`) are taken from the batch and ignored by non-MS models."""
    x_t = q_sample(tables, x0, t, noise)
    out = model(x_t, t, captions, batch["mask"], resolution=batch["img_hw"], aspect_ratio=batch["aspect_ratio"])
    return diffusion_loss(tables, out, x0, x_t, t, noise, prediction_type)


def pixart_loss(model, batch, tables, x0, t, noise, captions, prediction_type="epsilon"):
    """The batch mean of `pixart_sample_losses`."""
    return pixart_sample_losses(model, batch, tables, x0, t, noise, captions, prediction_type).mean()
