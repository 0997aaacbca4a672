"""Text-to-image: `PixArtPipeline`, with the diffusers `PixArtAlphaPipeline` / `PixArtSigmaPipeline` call
signature and behaviour (PixArt-Σ: 300-token captions, no micro-conditions, the 2048 bins: the transformer's config
says which; the SDXL VAE's scaling factor: its config).

A call's arguments become one GenerationRequest (pixart_jax.pipelines.request), checked before any compute;
`generate(request)` runs it. The denoising loop, the VAE decode and the resize-back of resolution binning run in one
jitted function (pixart_jax.pipelines.loop) that compiles once per (shapes, steps, sampler, guidance on/off).
Components are read at every call, so `pipe.transformer = other` (as diffusers users do) takes effect.

The batch runs data-parallel over the local devices (as many as divide it evenly): the images are split, the
weights replicated, or with `fsdp` > 1 the transformer's weights sharded over groups of `fsdp` devices (for models
that do not fit one device). The images do not depend on the number of devices.
"""
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pixart_jax import sharding
from pixart_jax.files import read_json
from pixart_jax.images import to_numpy, to_pil
from pixart_jax.models.transformer_config import PIPELINE_TOKENS
from pixart_jax.pipelines.batching import check_batchable
from pixart_jax.pipelines.control import ControlKind
from pixart_jax.pipelines.guidance import Caption
from pixart_jax.pipelines.loop import LoopInputs, LoopSpec, run_loop
from pixart_jax.pipelines.lora import LoRAMethods
from pixart_jax.pipelines.memory import check_fits, compiled_bytes
from pixart_jax.pipelines.noise import call_keys, initial_latents
from pixart_jax.pipelines.prompt_cache import PromptCache, prompt_key
from pixart_jax.pipelines.prompts import encode_prompt, load_tokenizer
from pixart_jax.pipelines.request import GenerationRequest, NullCaption, OutputType
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.seeds import random_seed
from pixart_jax.weights import WeightsError
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.transformer import load_transformer
from pixart_jax.weights.vae import load_vae

PIPELINE_CLASSES = tuple(PIPELINE_TOKENS)
FSDP_RULES = {"kernel_in": "fsdp"}  # the transformer's kernels split along their input dim, as in training
PLAIN_CONTROL = ("control_image and control_latents need a ControlNet-Transformer: use PixArtControlNetPipeline "
                 "(pixart_jax.load_controlnet)")


@dataclasses.dataclass
class ImagePipelineOutput:
    """What `PixArtPipeline.__call__` returns with return_dict=True (as diffusers' output of the same name):
    `images` is a list of PIL images, an (N, H, W, 3) array in [0, 1] or the (N, C, h, w) latents."""
    images: Any

    def __getitem__(self, index):
        return (self.images,)[index]


@dataclasses.dataclass
class PixArtPipeline(LoRAMethods):
    """transformer, text_encoder (callable (ids, mask) -> embeddings), tokenizer, vae (anything with `decode`,
    `scaling_factor` and `spatial_factor`, e.g. an AutoencoderKL) and sampler, as components; `devices` to split
    a batch over (default: every local device) and `fsdp`, the number of devices one copy of the transformer's
    weights is sharded over (1: replicated); `prompt_cache`, an LRU cache of prompt embeddings (default
    PromptCache(0): off; a server sets e.g. PromptCache(256)). diffusers' LoRA methods (load_lora_weights,
    set_adapters, fuse_lora, ...: pixart_jax.pipelines.lora) act on the transformer; a changed adapter set retraces
    the loop."""

    transformer: nnx.Module
    text_encoder: object
    tokenizer: object
    vae: nnx.Module
    sampler: object
    devices: list | None = None
    fsdp: int = 1
    prompt_cache: PromptCache = dataclasses.field(default_factory=PromptCache)

    def __post_init__(self):
        self._bar = self._on_step = None  # this pipeline's progress bar and step callback while a call runs
        self._loop = jax.jit(self._generate_fn, static_argnames=("graphdef", "spec"))

    @classmethod
    def from_pretrained(cls, directory: str, dtype=jnp.float32, sampler: str | None = None, int8: bool = False,
                        **sampler_options) -> "PixArtPipeline":
        """A diffusers PixArt-α or PixArt-Σ pipeline directory (model_index.json, transformer/, text_encoder/,
        tokenizer/, vae/, scheduler/). `sampler` (a SamplerName: "dpm", "ddim", "lcm", "tcd", "pcm", "sa", "ddpm")
        overrides the scheduler config's choice. `int8` stores every T5 linear as int8 codes + scales
        (pixart_jax.models.int8; needed for an int8 text_encoder/ written by pixart_jax.weights.t5_int8)."""
        check_pipeline_directory(directory)
        components = load_components(directory, dtype, sampler, int8=int8, **sampler_options)  # tokenizer first
        return cls(transformer=load_transformer(os.path.join(directory, "transformer"), dtype), **components)

    @property
    def vae_scale_factor(self):
        return self.vae.spatial_factor

    def _tick(self):
        if self._bar is not None:
            self._bar.update()
        if self._on_step is not None:
            self._on_step()

    def _generate_fn(self, state, inputs, *, graphdef, spec):
        transformer, vae = nnx.merge(graphdef, state)
        return run_loop(transformer, vae, inputs, spec, self._tick)

    def lower(self, inputs: LoopInputs, spec: LoopSpec) -> jax.stages.Lowered:
        """The jitted loop lowered for `inputs` (arrays or jax.ShapeDtypeStructs with their shardings) with the
        current transformer and VAE (abstract ones too: planning compiles it for a TPU slice); call it inside
        jax.set_mesh of the mesh the inputs and weights are placed on. Its compiled form runs on
        (nnx.state((transformer, vae)), inputs)."""
        graphdef, state = nnx.split((self.transformer, self.vae))
        return self._loop.lower(state, inputs, graphdef=graphdef, spec=spec)

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str = "",
                 num_inference_steps: int = 20, guidance_scale: float = 4.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, seed: int | None = None, latents=None,
                 output_type: str = "pil", use_resolution_binning: bool = True, clean_caption: bool = True,
                 prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                 negative_prompt_attention_mask=None, null_caption: str = "negative_prompt",
                 guidance_channels: int | None = None, eta: float = 0.0, progress: bool = True,
                 return_dict: bool = True, control_image=None, control: str = ControlKind.canny,
                 control_latents=None, max_sequence_length: int | None = None):
        """Generates images; arguments as diffusers' PixArtAlphaPipeline / PixArtSigmaPipeline
        (`max_sequence_length`: the caption tokens, by default the transformer's: 120 for α, 300 for Σ), plus
        `seed` (an integer in [0, 2**32 - 1]: the initial noise and any sampler noise come from
        jax.random.key(seed); random when None), `null_caption`: "negative_prompt" (T5 of the negative prompt, as
        diffusers) or "y_embedding" (the checkpoint's null caption with the prompt's mask, as the original repo),
        and `guidance_channels`: None guides every ε channel (a learned variance comes from the conditional half),
        3 reproduces the original repo's IDDPM sampling, which guides only ε channels 0-2. `eta` is, as in
        diffusers, DDIM's η and TCD's / PCM's γ for this call (it replaces the sampler's own; other samplers ignore
        it). The control arguments are PixArtControlNetPipeline's. Returns an ImagePipelineOutput whose `images`
        are a list of PIL images, an (N, H, W, 3) array in [0, 1] or the (N, 4, h, w) latents; with
        return_dict=False the tuple (images,)."""
        request = GenerationRequest.from_call(locals())
        return self.generate(request, progress=progress, return_dict=return_dict)

    def generate(self, request: GenerationRequest, *, progress: bool = True, return_dict: bool = True):
        """Runs one GenerationRequest (what __call__ does with its arguments); a ValueError before any compute for
        a request this pipeline cannot run."""
        images = self.generate_batch([request], progress=progress)[0]
        return ImagePipelineOutput(images) if return_dict else (images,)

    def generate_batch(self, requests: list[GenerationRequest], *, progress: bool = False, on_step=None) -> list:
        """Requests that can share one forward (pixart_jax.pipelines.batching: same binned size, steps, guidance, η)
        run as one batch, each with its own prompts, images and seed: the list of each request's images (as
        `generate(request).images`), each what the request gives run alone. `on_step()` is called after each
        model call of the loop (from the runtime's thread); a ValueError before any compute for a bad request."""
        sizes = [self._sizes(request) for request in requests]
        check_batchable(requests, sizes)
        first, groups = requests[0], tuple(size.latent_shape[0] for size in sizes)
        spec = LoopSpec(first.num_inference_steps, self.sampler.with_eta(first.eta), first.guided, sizes[0].out_size,
                        first.guidance_channels, first.decoded, progress or on_step is not None,
                        groups if len(groups) > 1 else None)
        inputs, mesh = self._inputs(requests, sizes)
        with jax.set_mesh(mesh):
            # compiled ahead (jit's caches make a second call with the same shapes reuse it) to check its memory
            compiled = self.lower(inputs, spec).compile()
        out_height, out_width = sizes[0].out_size
        check_fits(compiled_bytes(compiled), f"generating {sum(groups)} image(s) of {out_height}x{out_width}")
        self._on_step = on_step
        with tqdm(total=spec.steps, desc="denoising", disable=not progress) as self._bar, jax.set_mesh(mesh):
            try:
                result = jax.block_until_ready(compiled(nnx.state((self.transformer, self.vae)), inputs))
            finally:
                self._bar = self._on_step = None
        parts = jnp.split(result, np.cumsum(groups)[:-1]) if len(groups) > 1 else [result]
        return [_output(part, request.output_type) for part, request in zip(parts, requests)]

    def _sizes(self, request):
        """request.sizes for this pipeline's transformer and VAE, after its control is checked, with the host memory
        tracing will take checked."""
        self._check_control(request.control)
        cfg, scale = self.transformer.cfg, self.vae_scale_factor
        sizes = request.sizes(cfg, scale)
        tokens = (sizes.height // scale // cfg.patch_size) * (sizes.width // scale // cfg.patch_size)
        # tracing builds the (tokens, hidden) float64 position table on the host (about twice that at its peak)
        check_fits(2 * 8 * tokens * cfg.hidden_size, f"the position embedding of {sizes.height}x{sizes.width} "
                   f"({tokens:,} tokens)", jax.devices("cpu")[0])
        return sizes

    def _check_control(self, control):
        """A plain PixArt takes no control."""
        if control is not None:
            raise ValueError(PLAIN_CONTROL)

    def _inputs(self, requests, sizes):
        """(LoopInputs of the requests' rows placed on the batch's mesh, that mesh): T5 runs here, the noise is
        drawn here, each request's from its own seed; one sampler key, or one per request when batched."""
        parts = [self._request_inputs(request, size) for request, size in zip(requests, sizes)]
        if len(parts) == 1:
            rows, key, shared = parts[0]
        else:
            rows, shared = (jax.tree.map(lambda *a: jnp.concatenate(a), *[p[i] for p in parts]) for i in (0, 2))
            key = jnp.stack([p[1] for p in parts])
        mesh = self.mesh(rows[0].shape[0])
        rows, shared = jax.device_put((rows, shared), sharding.batch_sharding(mesh))
        return LoopInputs(*rows, jnp.float32(requests[0].guidance_scale), key, shared), mesh

    def _request_inputs(self, request, sizes):
        """One request's ((latents, cond, uncond, resolution, aspect_ratio) rows, sampler key, shared inputs)."""
        cond, uncond = self._embeddings(request)
        per_prompt = request.num_images_per_prompt
        cond, uncond = (Caption(*(jnp.repeat(a, per_prompt, axis=0) for a in c)) for c in (cond, uncond))
        keys = call_keys(random_seed() if request.seed is None else request.seed)
        latents = request.latents
        if latents is None:
            latents = initial_latents(keys.latents, sizes.latent_shape)
        n = sizes.latent_shape[0]
        resolution = aspect_ratio = None
        if self.transformer.cfg.micro_conditions:
            resolution = jnp.tile(jnp.array([[sizes.height, sizes.width]], jnp.float32), (n, 1))
            aspect_ratio = jnp.full((n, 1), sizes.height / sizes.width, jnp.float32)
        shared = self._shared_inputs(request, sizes, shared_inputs_key(keys.root))
        rows = (jnp.asarray(latents, jnp.float32), cond, uncond, resolution, aspect_ratio)
        return rows, keys.sampler, shared

    def mesh(self, batch):
        """The ("data", "fsdp") mesh a batch of `batch` images runs on, with the weights placed on it (once: placed
        weights stay where they are)."""
        devices = sharding.data_parallel_devices(batch, self.devices or jax.local_devices(), self.fsdp)
        mesh = sharding.make_mesh(-1, self.fsdp, devices)
        sharding.place(self.transformer, mesh, FSDP_RULES if self.fsdp > 1 else None)
        sharding.place(self.vae, mesh)
        return mesh

    def _shared_inputs(self, request, sizes, key):
        """Extra model inputs of one call, the same in both guidance halves ({name: (images, ...)} at the binned
        size; `key` for any randomness): none for a plain PixArt."""
        return {}

    def _embeddings(self, request):
        """(cond, uncond) Captions: encoded prompts, or the given embeddings (checked by request.sizes). Without
        guidance the negative prompt is not encoded (uncond is cond: the loop never reads it)."""
        if request.prompt_embeds is None:
            cond, uncond = self._encoded(request)
        else:
            cond = _caption(request.prompt_embeds, request.prompt_attention_mask)
            uncond = None if request.negative_prompt_embeds is None else _caption(
                request.negative_prompt_embeds, request.negative_prompt_attention_mask)
        if uncond is None:  # the checkpoint's null caption, with the prompts' mask
            null = self.transformer.y_embedding[...].astype(cond.embeds.dtype)
            uncond = Caption(jnp.broadcast_to(null, cond.embeds.shape), cond.mask)
        return cond, uncond

    def _encoded(self, request):
        """(cond, uncond) Captions of the prompts through T5 (trimmed to the prompts' tokens), from the prompt
        cache when it holds them; uncond None for the null caption."""
        max_length = request.tokens(self.transformer.cfg)
        negatives = request.guided and request.null_caption != NullCaption.y_embedding

        def encode():
            out = encode_prompt(request.prompt, request.negative_prompt, tokenizer=self.tokenizer,
                                text_encoder=self.text_encoder, max_length=max_length,
                                clean_caption=request.clean_caption, do_classifier_free_guidance=negatives, trim=True)
            cond = Caption(out.embeds, out.mask)
            if not request.guided:
                return cond, cond
            return cond, Caption(out.negative_embeds, out.negative_mask) if negatives else None

        return self.prompt_cache.get(prompt_key(request, max_length), (self.text_encoder, self.tokenizer), encode)


def shared_inputs_key(root):
    """The key of a call's shared inputs (the control image's posterior noise) from its root key,
    jax.random.key(seed); the PyTorch path draws that noise from it too, so one seed gives both the same."""
    return jax.random.fold_in(root, 1)


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


def _output(images, output_type):
    """Decoded images (N, 3, H, W) in [-1, 1] as `output_type` asks (PIL or NumPy); latents as they are."""
    if output_type == OutputType.latent:
        return images
    return to_numpy(images) if output_type == OutputType.np else to_pil(images)


def _caption(embeds, mask):
    return Caption(jnp.asarray(embeds, jnp.float32), jnp.asarray(mask, jnp.float32))
