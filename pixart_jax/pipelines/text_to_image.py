"""Text-to-image: `PixArtPipeline`, with the diffusers `PixArtAlphaPipeline` call signature and behaviour.

The denoising loop (classifier-free guidance batched in one forward), the VAE decode and the resize-back of
resolution binning run in one jitted function that compiles once per (shapes, steps, sampler, guidance on/off).
Components are read at every call, so `pipe.transformer = other` (as diffusers users do) takes effect.

The batch runs data-parallel over the local devices (as many as divide it evenly): the images are split, the
weights replicated, or with `fsdp` > 1 the transformer's weights sharded over groups of `fsdp` devices (for models
that do not fit one device). The images do not depend on the number of devices.
"""
import dataclasses
import math
import os
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pixart_jax import sharding
from pixart_jax.files import read_json
from pixart_jax.images import resize_and_crop, to_numpy, to_pil
from pixart_jax.pipelines.aspect_ratios import TEST_TABLES, bin_size
from pixart_jax.pipelines.guidance import Caption, guide, guided_forward
from pixart_jax.pipelines.memory import check_fits, compiled_bytes
from pixart_jax.pipelines.prompts import encode_prompt, load_tokenizer
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.weights import WeightsError
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.transformer import load_transformer
from pixart_jax.weights.vae import load_vae

PIPELINE_CLASSES = ("PixArtAlphaPipeline",)
BIN_TABLES = {128: TEST_TABLES[1024], 64: TEST_TABLES[512], 32: TEST_TABLES[256]}  # by transformer sample_size
OUTPUT_TYPES = ("pil", "np", "latent")
NULL_CAPTIONS = ("negative_prompt", "y_embedding")
FSDP_RULES = {"kernel_in": "fsdp"}  # the transformer's kernels split along their input dim, as in training


@dataclasses.dataclass
class ImagePipelineOutput:
    """What `PixArtPipeline.__call__` returns with return_dict=True (as diffusers' output of the same name):
    `images` is a list of PIL images, an (N, H, W, 3) array in [0, 1] or the (N, C, h, w) latents."""
    images: Any

    def __getitem__(self, index):
        return (self.images,)[index]


@dataclasses.dataclass
class PixArtPipeline:
    """transformer, text_encoder (callable (ids, mask) -> embeddings), tokenizer, vae (anything with `decode`,
    `scaling_factor` and `spatial_factor`, e.g. an AutoencoderKL) and sampler, as components; `devices` to split
    a batch over (default: every local device) and `fsdp`, the number of devices one copy of the transformer's
    weights is sharded over (1: replicated)."""

    transformer: nnx.Module
    text_encoder: object
    tokenizer: object
    vae: nnx.Module
    sampler: object
    devices: list | None = None
    fsdp: int = 1

    def __post_init__(self):
        self._bar = None  # this pipeline's progress bar while a call runs
        self._generate = jax.jit(self._generate_fn, static_argnames=(
            "graphdef", "steps", "sampler", "guided", "guidance_channels", "denoised_only", "out_size", "decode",
            "progress"))

    @classmethod
    def from_pretrained(cls, directory: str, dtype=jnp.float32, sampler: str | None = None, int8: bool = False,
                        **sampler_options) -> "PixArtPipeline":
        """A diffusers PixArt pipeline directory (model_index.json, transformer/, text_encoder/, tokenizer/, vae/,
        scheduler/). `sampler` (a SamplerName: "dpm", "ddim", "lcm", "tcd", "pcm", "sa", "ddpm") overrides the
        scheduler config's choice. `int8` stores every T5 linear as int8 codes + scales (pixart_jax.models.int8; needed
        for an int8 text_encoder/ written by pixart_jax.weights.t5_int8)."""
        check_pipeline_directory(directory)
        components = load_components(directory, dtype, sampler, int8=int8, **sampler_options)  # tokenizer first
        return cls(transformer=load_transformer(os.path.join(directory, "transformer"), dtype), **components)

    @property
    def vae_scale_factor(self):
        return self.vae.spatial_factor

    def _tick(self):
        if self._bar is not None:
            self._bar.update()

    def _generate_fn(self, state, latents, cond, uncond, resolution, aspect_ratio, guidance_scale, key, shared, *,
                     graphdef, steps, sampler, guided, guidance_channels, denoised_only, out_size, decode, progress):
        transformer, vae = nnx.merge(graphdef, state)
        channels = sampler.model_output_shape(latents.shape)[1]

        def model_fn(x, t):
            if progress:
                jax.debug.callback(self._tick)
            if not guided:
                return transformer(x, t, cond.embeds, cond.mask, resolution, aspect_ratio, **shared)[:, :channels]
            out_uncond, out_cond = guided_forward(transformer, x, t, cond, uncond, resolution=resolution,
                                                  aspect_ratio=aspect_ratio, **shared)
            # the variance channels of a learned-sigma model come from the conditional half
            return guide(out_uncond, out_cond, guidance_scale, guidance_channels or latents.shape[1])[:, :channels]

        noise_key = key if sampler.needs_noise(steps) else None
        latents = sampler.sample(model_fn, latents, steps, key=noise_key, return_denoised=denoised_only)
        if not decode:
            return latents
        images = vae.decode(latents / vae.scaling_factor)
        return resize_and_crop(images, *out_size)

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str = "",
                 num_inference_steps: int = 20, guidance_scale: float = 4.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, seed: int | None = None, latents=None,
                 output_type: str = "pil", use_resolution_binning: bool = True, clean_caption: bool = True,
                 prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                 negative_prompt_attention_mask=None, null_caption: str = "negative_prompt",
                 guidance_channels: int | None = None, eta: float = 0.0, progress: bool = True,
                 return_dict: bool = True):
        """Generates images; arguments as diffusers' PixArtAlphaPipeline, plus `seed` (the initial noise and any
        sampler noise come from jax.random.key(seed); random when None), `null_caption`: "negative_prompt"
        (T5 of the negative prompt, as diffusers) or "y_embedding" (the checkpoint's null caption with the
        prompt's mask, as the original repo), and `guidance_channels`: None guides every ε channel (a learned
        variance comes from the conditional half), 3 reproduces the original repo's IDDPM sampling, which guides
        only ε channels 0-2. `eta` is, as in diffusers, DDIM's η and TCD's / PCM's γ for this call (it replaces
        the sampler's own; other samplers ignore it). Returns an ImagePipelineOutput whose `images` are a list of
        PIL images, an (N, H, W, 3) array in [0, 1] or the (N, 4, h, w) latents; with return_dict=False the tuple
        (images,)."""
        cfg = self.transformer.cfg
        scale = self.vae_scale_factor
        (height, width), out_size = check_call(
            cfg, scale, prompt=prompt, prompt_embeds=prompt_embeds, steps=num_inference_steps,
            guidance_scale=guidance_scale, height=height, width=width, output_type=output_type,
            null_caption=null_caption, num_images_per_prompt=num_images_per_prompt,
            guidance_channels=guidance_channels, use_resolution_binning=use_resolution_binning, eta=eta)
        sampler = self.sampler.with_eta(eta)
        tokens = (height // scale // cfg.patch_size) * (width // scale // cfg.patch_size)
        # tracing builds the (tokens, hidden) float64 position table on the host (about twice that at its peak)
        check_fits(2 * 8 * tokens * cfg.hidden_size, f"the position embedding of {height}x{width} ({tokens:,} "
                   "tokens)", jax.devices("cpu")[0])
        guided = guidance_scale > 1.0
        cond, uncond = self._embeddings(guided, prompt, negative_prompt, clean_caption, null_caption, prompt_embeds,
                                        prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)
        prompts = cond.embeds.shape[0]
        n = prompts * num_images_per_prompt
        cond, uncond = (Caption(*(jnp.repeat(a, num_images_per_prompt, axis=0) for a in c)) for c in (cond, uncond))
        root = jax.random.key(secrets.randbits(31) if seed is None else seed)
        key_latents, key_sampler = jax.random.split(root)
        shape = (n, cfg.in_channels, height // scale, width // scale)
        if latents is None:
            latents = jax.random.normal(key_latents, shape, jnp.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        resolution = aspect_ratio = None
        if cfg.micro_conditions:
            resolution = jnp.tile(jnp.array([[height, width]], jnp.float32), (n, 1))
            aspect_ratio = jnp.full((n, 1), height / width, jnp.float32)
        shared = self._shared_inputs(prompts, num_images_per_prompt, height, width, shared_inputs_key(root))
        mesh = self.mesh(n)
        graphdef, state = nnx.split((self.transformer, self.vae))
        rows = jax.device_put((jnp.asarray(latents, jnp.float32), cond, uncond, resolution, aspect_ratio),
                              sharding.batch_sharding(mesh))
        shared = jax.device_put(shared, sharding.batch_sharding(mesh))
        args = (state, *rows, jnp.float32(guidance_scale), key_sampler, shared)
        with jax.set_mesh(mesh):
            # compiled ahead (jit's caches make a second call with the same shapes reuse it) to check its memory
            compiled = self._generate.lower(
                *args, graphdef=graphdef, steps=num_inference_steps, sampler=sampler, guided=guided,
                guidance_channels=guidance_channels, denoised_only=num_inference_steps == 1, out_size=out_size,
                decode=output_type != "latent", progress=progress).compile()
        check_fits(compiled_bytes(compiled), f"generating {n} image(s) of {out_size[0]}x{out_size[1]}")
        with tqdm(total=num_inference_steps, desc="denoising", disable=not progress) as self._bar, \
                jax.set_mesh(mesh):
            try:
                result = jax.block_until_ready(compiled(*args))
            finally:
                self._bar = None
        if output_type != "latent":
            result = to_numpy(result) if output_type == "np" else to_pil(result)
        return ImagePipelineOutput(result) if return_dict else (result,)

    def mesh(self, batch):
        """The ("data", "fsdp") mesh a batch of `batch` images runs on, with the weights placed on it (once: placed
        weights stay where they are)."""
        devices = sharding.data_parallel_devices(batch, self.devices or jax.local_devices(), self.fsdp)
        mesh = sharding.make_mesh(-1, self.fsdp, devices)
        sharding.place(self.transformer, mesh, FSDP_RULES if self.fsdp > 1 else None)
        sharding.place(self.vae, mesh)
        return mesh

    def _shared_inputs(self, prompts, per_prompt, height, width, key):
        """Extra model inputs of one call, the same in both guidance halves ({name: (prompts · per_prompt, ...)} at
        the binned height and width; `key` for any randomness): none for a plain PixArt."""
        return {}

    def _embeddings(self, guided, prompt, negative_prompt, clean_caption, null_caption, embeds, mask, neg_embeds,
                    neg_mask):
        """(cond, uncond) Captions: encoded prompts, or the given embeddings checked against the transformer.
        Without guidance the negative prompt is not encoded (uncond is cond: the loop never reads it)."""
        cfg = self.transformer.cfg
        if embeds is None:
            null = self.transformer.y_embedding[...] if null_caption == "y_embedding" else None
            embeds, mask, neg_embeds, neg_mask = encode_prompt(
                prompt, negative_prompt, tokenizer=self.tokenizer, text_encoder=self.text_encoder,
                max_length=cfg.max_tokens, clean_caption=clean_caption, null_embedding=null,
                do_classifier_free_guidance=guided)
            cond = Caption(embeds, mask)
            return cond, (Caption(neg_embeds, neg_mask) if guided else cond)
        expected = (cfg.max_tokens, cfg.caption_channels)
        cond = _checked_caption(embeds, mask, expected, "prompt_embeds", "prompt_attention_mask")
        if neg_embeds is None:
            null = jnp.broadcast_to(self.transformer.y_embedding[...], cond.embeds.shape)
            return cond, Caption(null, cond.mask)
        uncond = _checked_caption(neg_embeds, neg_mask, expected, "negative_prompt_embeds",
                                  "negative_prompt_attention_mask")
        if uncond.embeds.shape[0] != cond.embeds.shape[0]:
            raise ValueError(f"negative_prompt_embeds has batch {uncond.embeds.shape[0]}, prompt_embeds "
                             f"{cond.embeds.shape[0]}")
        return cond, uncond


def check_call(cfg, vae_scale, *, prompt, prompt_embeds, steps, guidance_scale, height, width, output_type,
               null_caption, num_images_per_prompt, guidance_channels, use_resolution_binning, eta=0.0):
    """Checks a pipeline call's arguments (both backends) before any compute; returns the (height, width) the image
    is generated at (binned) and the (height, width) it is returned at. `cfg` is the transformer's PixArtConfig."""
    if height is None:
        height = cfg.sample_size * vae_scale
    if width is None:
        width = cfg.sample_size * vae_scale
    if prompt_embeds is None:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 or value % 8:
            raise ValueError(f"{name} must be a positive multiple of 8, got {value!r} "
                             f"(height x width: {height!r}x{width!r})")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if null_caption not in NULL_CAPTIONS:
        raise ValueError(f"null_caption must be one of {NULL_CAPTIONS}, got {null_caption!r}")
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    if guidance_channels is not None and not 1 <= guidance_channels <= cfg.in_channels:
        raise ValueError(f"guidance_channels must be None or in [1, {cfg.in_channels}], got {guidance_channels}")
    out_size = (height, width)
    if use_resolution_binning:
        if cfg.sample_size not in BIN_TABLES:
            raise ValueError(f"resolution binning needs a transformer sample_size in {sorted(BIN_TABLES)}, "
                             f"this one has {cfg.sample_size}: pass use_resolution_binning=False")
        height, width = bin_size(height, width, BIN_TABLES[cfg.sample_size])
    multiple = vae_scale * cfg.patch_size
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple} (VAE factor {vae_scale} x patch "
                         f"{cfg.patch_size}) without resolution binning, got {height}x{width}")
    return (height, width), out_size


def prompt_count(prompt, prompt_embeds) -> int:
    """How many prompts a call has: the rows of `prompt_embeds` when given, else the prompt strings."""
    if prompt_embeds is not None:
        return len(prompt_embeds)
    return 1 if isinstance(prompt, str) else len(prompt or ())


def shared_inputs_key(root):
    """The key of a call's shared inputs (the control image's posterior noise) from its root key,
    jax.random.key(seed); the PyTorch path draws that noise from it too, so one seed gives both the same."""
    return jax.random.fold_in(root, 1)


def check_caption(embeds_shape, mask_shape, expected, name, mask_name):
    """Checks given caption features (B, L, C) against the transformer's expected (L, C) and their mask (B, L)."""
    if len(embeds_shape) != 3 or tuple(embeds_shape[1:]) != expected:
        raise ValueError(f"{name} must have shape (batch, {expected[0]}, {expected[1]}) for this transformer, "
                         f"got {tuple(embeds_shape)}")
    if mask_shape is None:
        raise ValueError(f"{name} needs {mask_name} (batch, {expected[0]}) of 0/1: which tokens are real")
    if tuple(mask_shape) != tuple(embeds_shape[:2]):
        raise ValueError(f"{mask_name} must have shape {tuple(embeds_shape[:2])}, got {tuple(mask_shape)}")


def check_pipeline_directory(directory):
    """A WeightsError unless `directory` holds a PixArt pipeline's model_index.json."""
    index_path = os.path.join(directory, "model_index.json")
    if not os.path.isfile(index_path):
        raise WeightsError(f"{directory} is not a PixArt pipeline directory: it has no model_index.json")
    index = read_json(index_path)
    if index.get("_class_name") not in PIPELINE_CLASSES:
        raise WeightsError(f"{index_path} describes a {index.get('_class_name')!r}, not one of {PIPELINE_CLASSES}")


def load_components(directory, dtype=jnp.float32, sampler=None, int8=False, **sampler_options):
    """{tokenizer, text_encoder, vae, sampler} of a PixArt pipeline directory (all but the transformer); the
    tokenizer first, whose files are checked before any model is read."""
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    return dict(tokenizer=load_tokenizer(path("tokenizer")),
                text_encoder=load_text_encoder(path("text_encoder"), dtype, int8=int8),
                vae=load_vae(path("vae"), dtype),
                sampler=from_scheduler_config(path("scheduler"), sampler=sampler, **sampler_options))


def _checked_caption(embeds, mask, expected, name, mask_name):
    """Caption(embeds, mask) as float32 after check_caption."""
    check_caption(np.shape(embeds), None if mask is None else np.shape(mask), expected, name, mask_name)
    return Caption(jnp.asarray(embeds, jnp.float32), jnp.asarray(mask, jnp.float32))
