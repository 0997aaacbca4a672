"""Periodic sample grids during training: the EMA weights, the first batch's captions, classifier-free guidance with
the null caption `y_embedding` (the convention of the PixArt-alpha repo's `scripts/inference.py`) and one of our
samplers, in one jit.

With a VAE directory the latents are decoded; without one (the tiny config) latent channels 0-2 are shown."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from pixart_jax.images import write_png
from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.pipelines.guidance import Caption, guide, guided_forward
from pixart_jax.samplers import make_sampler
from pixart_jax.sharding import replicated


def image_grid(images, columns=None):
    """(N, H, W, 3) uint8 -> one (rows·H, columns·W, 3) uint8 grid."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, image in enumerate(images):
        grid[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = image
    return grid


def _to_uint8(images):
    """(N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) uint8."""
    images = np.clip((np.asarray(images, np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


class SampleGrid:
    """`grid(state)` -> (H, W, 3) uint8 of `cfg.num_images` samples for the captions of `batch` (device arrays),
    from fixed noise, so grids of different steps are comparable. Compiles once."""

    def __init__(self, graphdef, cfg, batch, mesh, seed, latent_scale=LATENT_SCALE, prediction_type="epsilon"):
        n = min(cfg.num_images, batch["caption"].shape[0])
        self.cond = {k: batch[k] for k in ("caption", "mask", "img_hw", "aspect_ratio")}
        shape = (n, *batch["mean"].shape[1:])
        noise = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        sampler = make_sampler(cfg.sampler, prediction_type=prediction_type)
        vae = None
        if cfg.vae:
            from pixart_jax.weights.vae import load_vae
            vae = load_vae(cfg.vae)
        vae_def, vae_state = nnx.split(vae) if vae is not None else (None, None)

        def generate(params, buffers, cond, vae_state):
            model = nnx.merge(graphdef, params, buffers)
            cond = {k: v[:n] for k, v in cond.items()}
            null = jnp.broadcast_to(buffers["y_embedding"][None], cond["caption"].shape)
            captions = Caption(cond["caption"], cond["mask"])

            def guided(x, t):
                out_uncond, out_cond = guided_forward(model, x, t, captions, Caption(null, cond["mask"]),
                                                      resolution=cond["img_hw"], aspect_ratio=cond["aspect_ratio"])
                return guide(out_uncond, out_cond, cfg.guidance_scale)[:, :shape[1]]

            # samplers that inject noise (LCM, TCD, SA-Solver) draw it from a fixed key too
            key = jax.random.key(seed + 1) if sampler.needs_noise(cfg.steps) else None
            latents = sampler.sample(guided, noise, cfg.steps, key=key)
            if vae_state is None:
                scale = jnp.abs(latents[:, :3]).max(axis=(1, 2, 3), keepdims=True) + 1e-6
                return latents[:, :3] / scale
            return nnx.merge(vae_def, vae_state).decode(latents / latent_scale)

        self._generate = jax.jit(generate, out_shardings=replicated(mesh))
        self._vae_state = vae_state

    def grid(self, state):
        images = _to_uint8(np.asarray(self._generate(state["ema"], state["buffers"], self.cond, self._vae_state)))
        if self._vae_state is None:  # one latent pixel covers 8x8 image pixels
            images = images.repeat(8, axis=1).repeat(8, axis=2)
        return image_grid(images)


def save_png(image, path):
    """Writes an (H, W, 3) uint8 image (creating the folder)."""
    write_png(Image.fromarray(image), path)
