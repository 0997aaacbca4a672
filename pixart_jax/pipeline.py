"""Text-to-image: `PixArtPipeline`, with the diffusers `PixArtAlphaPipeline` call signature and behaviour.

The denoising loop (classifier-free guidance batched in one forward), the VAE decode and the resize-back of
resolution binning run in one jitted function that compiles once per (shapes, steps, sampler, guidance on/off).
"""
import dataclasses
import os
import secrets

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pixart_jax.aspect_ratios import TEST_TABLES, bin_size
from pixart_jax.checkpoints import load_transformer
from pixart_jax.images import resize_and_crop, to_numpy, to_pil
from pixart_jax.prompts import encode_prompt, load_tokenizer
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.t5 import load_text_encoder
from pixart_jax.vae import load_vae
from pixart_jax.weights import CheckpointError
from pixart_jax.weights.files import read_json

PIPELINE_CLASSES = ("PixArtAlphaPipeline",)
BIN_TABLES = {128: TEST_TABLES[1024], 64: TEST_TABLES[512], 32: TEST_TABLES[256]}  # by transformer sample_size
OUTPUT_TYPES = ("pil", "np", "latent")


class _Progress:
    """The tqdm bar the compiled loop reports to: one host callback per model evaluation."""

    bar = None

    @classmethod
    def tick(cls):
        if cls.bar is not None:
            cls.bar.update()


@dataclasses.dataclass
class PixArtPipeline:
    """transformer, text_encoder (callable (ids, mask) -> embeddings), tokenizer, vae (anything with `decode`,
    `scaling_factor` and `spatial_factor`, e.g. an AutoencoderKL) and sampler, as components."""

    transformer: nnx.Module
    text_encoder: object
    tokenizer: object
    vae: nnx.Module
    sampler: object

    def __post_init__(self):
        self._graphdef, self._state = nnx.split((self.transformer, self.vae))
        self._generate = jax.jit(self._generate_fn, static_argnames=("steps", "sampler", "guided", "denoised_only",
                                                                      "out_size", "decode", "progress"))

    @classmethod
    def from_pretrained(cls, directory, dtype=jnp.float32, sampler=None, **sampler_options):
        """A diffusers PixArt pipeline directory (model_index.json, transformer/, text_encoder/, tokenizer/, vae/,
        scheduler/). `sampler` ("dpm", "ddim", "lcm", "ddpm") overrides the scheduler config's class."""
        index_path = os.path.join(directory, "model_index.json")
        if not os.path.isfile(index_path):
            raise CheckpointError(f"{directory} is not a PixArt pipeline directory: it has no model_index.json")
        index = read_json(index_path)
        if index.get("_class_name") not in PIPELINE_CLASSES:
            raise CheckpointError(f"{index_path} describes a {index.get('_class_name')!r}, not one of "
                                  f"{PIPELINE_CLASSES}")
        path = lambda name: os.path.join(directory, name)  # noqa: E731
        return cls(transformer=load_transformer(path("transformer"), dtype),
                   text_encoder=load_text_encoder(path("text_encoder"), dtype),
                   tokenizer=load_tokenizer(path("tokenizer")), vae=load_vae(path("vae"), dtype),
                   sampler=from_scheduler_config(path("scheduler"), sampler=sampler, **sampler_options))

    @property
    def vae_scale_factor(self):
        return self.vae.spatial_factor

    def _generate_fn(self, state, latents, embeds, mask, resolution, aspect_ratio, guidance_scale, key, *, steps,
                     sampler, guided, denoised_only, out_size, decode, progress):
        transformer, vae = nnx.merge(self._graphdef, state)
        channels = sampler.model_output_shape(latents.shape)[1]

        def model_fn(x, t):
            if progress:
                jax.debug.callback(_Progress.tick)
            if not guided:
                return transformer(x, t, embeds, mask, resolution, aspect_ratio)[:, :channels]
            out = transformer(jnp.concatenate([x, x]), jnp.concatenate([t, t]), embeds, mask,
                              jnp.concatenate([resolution, resolution]) if resolution is not None else None,
                              jnp.concatenate([aspect_ratio, aspect_ratio]) if aspect_ratio is not None else None)
            uncond, cond = jnp.split(out, 2)
            return (uncond + guidance_scale * (cond - uncond))[:, :channels]

        noise_key = key if sampler.needs_noise(steps) else None
        latents = sampler.sample(model_fn, latents, steps, key=noise_key, return_denoised=denoised_only)
        if not decode:
            return latents
        images = vae.decode(latents / vae.scaling_factor)
        return resize_and_crop(images, *out_size)

    def __call__(self, prompt=None, negative_prompt="", num_inference_steps=20, guidance_scale=4.5, height=None,
                 width=None, num_images_per_prompt=1, seed=None, latents=None, output_type="pil",
                 use_resolution_binning=True, clean_caption=True, prompt_embeds=None, prompt_attention_mask=None,
                 negative_prompt_embeds=None, negative_prompt_attention_mask=None, null_caption="negative_prompt",
                 progress=True):
        """Generates images; arguments as diffusers' PixArtAlphaPipeline, plus `seed` (the initial noise and any
        sampler noise come from jax.random.key(seed); random when None) and `null_caption`: "negative_prompt"
        (T5 of the negative prompt, as diffusers) or "y_embedding" (the checkpoint's null caption with the
        prompt's mask, as the original repo). Returns a list of PIL images, an (N, H, W, 3) array in [0, 1] or
        the (N, 4, h, w) latents."""
        cfg = self.transformer.cfg
        scale = self.vae_scale_factor
        height = height or cfg.sample_size * scale
        width = width or cfg.sample_size * scale
        self._check(prompt, prompt_embeds, num_inference_steps, guidance_scale, height, width, output_type,
                    null_caption, num_images_per_prompt)
        out_size = (height, width)
        if use_resolution_binning:
            if cfg.sample_size not in BIN_TABLES:
                raise ValueError(f"resolution binning needs a transformer sample_size in {sorted(BIN_TABLES)}, "
                                 f"this one has {cfg.sample_size}: pass use_resolution_binning=False")
            height, width = bin_size(height, width, BIN_TABLES[cfg.sample_size])
        multiple = scale * cfg.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} (VAE factor {scale} x patch "
                             f"{cfg.patch_size}) without resolution binning, got {height}x{width}")
        guided = guidance_scale > 1.0
        embeds, mask, neg_embeds, neg_mask = self._embeddings(
            prompt, negative_prompt, clean_caption, null_caption, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask)
        n = embeds.shape[0] * num_images_per_prompt
        embeds, mask = (jnp.repeat(a, num_images_per_prompt, axis=0) for a in (embeds, mask))
        if guided:
            neg_embeds, neg_mask = (jnp.repeat(a, num_images_per_prompt, axis=0) for a in (neg_embeds, neg_mask))
            embeds, mask = jnp.concatenate([neg_embeds, embeds]), jnp.concatenate([neg_mask, mask])
        key_latents, key_sampler = jax.random.split(jax.random.key(secrets.randbits(31) if seed is None else seed))
        shape = (n, cfg.in_channels, height // scale, width // scale)
        if latents is None:
            latents = jax.random.normal(key_latents, shape, jnp.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        resolution = aspect_ratio = None
        if cfg.micro_conditions:
            resolution = jnp.tile(jnp.array([[height, width]], jnp.float32), (n, 1))
            aspect_ratio = jnp.full((n, 1), height / width, jnp.float32)
        with tqdm(total=num_inference_steps, desc="denoising", disable=not progress) as bar:
            _Progress.bar = bar
            try:
                result = self._generate(
                    self._state, jnp.asarray(latents, jnp.float32), embeds, mask, resolution, aspect_ratio,
                    jnp.float32(guidance_scale), key_sampler, steps=num_inference_steps, sampler=self.sampler,
                    guided=guided, denoised_only=num_inference_steps == 1, out_size=out_size,
                    decode=output_type != "latent", progress=progress)
                result = jax.block_until_ready(result)
            finally:
                _Progress.bar = None
        if output_type == "latent":
            return result
        return to_numpy(result) if output_type == "np" else to_pil(result)

    def _embeddings(self, prompt, negative_prompt, clean_caption, null_caption, embeds, mask, neg_embeds, neg_mask):
        if embeds is None:
            null = self.transformer.y_embedding[...] if null_caption == "y_embedding" else None
            return encode_prompt(prompt, negative_prompt, tokenizer=self.tokenizer, text_encoder=self.text_encoder,
                                 max_length=self.transformer.cfg.max_tokens, clean_caption=clean_caption,
                                 null_embedding=null)
        embeds = jnp.asarray(embeds, jnp.float32)
        mask = jnp.ones(embeds.shape[:2], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
        if neg_embeds is None:
            neg_embeds = jnp.broadcast_to(self.transformer.y_embedding[...], embeds.shape)
            neg_mask = mask
        neg_mask = jnp.ones(neg_embeds.shape[:2], jnp.float32) if neg_mask is None else neg_mask
        return embeds, mask, jnp.asarray(neg_embeds, jnp.float32), jnp.asarray(neg_mask, jnp.float32)

    def _check(self, prompt, prompt_embeds, steps, guidance_scale, height, width, output_type, null_caption, n):
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {height}x{width}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if null_caption not in ("negative_prompt", "y_embedding"):
            raise ValueError(f"null_caption must be 'negative_prompt' or 'y_embedding', got {null_caption!r}")
        if n < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {n}")
