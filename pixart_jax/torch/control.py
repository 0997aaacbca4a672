"""Control latents in PyTorch: control pixels (pixart_jax.pipelines.control's fitted edge maps in [-1, 1]) through
diffusers' AutoencoderKL with pixart_jax.pipelines.control.control_latents' recipe, a posterior sample × the VAE's
scaling factor (as the reference app). The posterior noise is the JAX pipeline's: jax.random from the call's seed (on
the CPU), so one seed gives both backends the same control latents."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from pixart_jax.pipelines.noise import call_keys
from pixart_jax.pipelines.text_to_image import shared_inputs_key
from pixart_jax.torch.loading import to_torch
from pixart_jax.torch.noise import jax_on_cpu


def posterior_noise(seed: int, shape) -> np.ndarray:
    """float32 N(0, 1) noise of `shape`, as the JAX pipeline draws its control posterior noise for `seed`."""
    with jax_on_cpu():
        return np.asarray(jax.random.normal(shared_inputs_key(call_keys(seed).root), shape, jnp.float32))


@torch.inference_mode()
def encode_control(vae, pixels: np.ndarray, seed: int) -> torch.Tensor:
    """(B, C, h, w) float32 scaled latents of (B, 3, H, W) control pixels in [-1, 1], on the VAE's device."""
    posterior = vae.encode(torch.from_numpy(pixels).to(vae.device, vae.dtype)).latent_dist
    noise = to_torch(posterior_noise(seed, tuple(posterior.mean.shape)), vae.device)
    return vae.config.scaling_factor * (posterior.mean.float() + posterior.std.float() * noise)
