"""Text-to-image in PyTorch: `PixArtTorchPipeline`, with `PixArtPipeline`'s call signature and behaviour, over the
same pipeline directory, for serving on GPUs (float16 included) with int8 T5 and staged, low-memory generation.

Components: transformers' T5EncoderModel (float, or int8 with pixart_jax's codes), diffusers'
PixArtTransformer2DModel and AutoencoderKL, and the diffusers scheduler that our sampler registry maps the
directory's scheduler config to. What the two pipelines share is one code: the call as a checked GenerationRequest
and its sizes (pixart_jax.pipelines.request), aspect-ratio bins, caption cleaning and tokenisation
(pixart_jax.pipelines.prompts), scheduler configs (pixart_jax.samplers), control images up to their VAE input
(pixart_jax.pipelines.control). Latents stay float32 between steps, as in the JAX pipeline; the models compute in
`dtype`.
"""
import dataclasses
import functools
import os

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pixart_jax.choices import Int8Backend, NoiseSource, TorchDType, choose
from pixart_jax.images import cover_and_crop, pil_images
from pixart_jax.models.transformer_config import PixArtConfig
from pixart_jax.models.vae import VAEConfig
from pixart_jax.pipelines.control import ControlKind, check_control, control_rows
from pixart_jax.pipelines.lora import LoRAMethods, lora_adapters
from pixart_jax.pipelines.prompt_cache import PromptCache, prompt_key
from pixart_jax.pipelines.prompts import load_tokenizer, prompt_tokens, trimmed_length
from pixart_jax.pipelines.request import GenerationRequest, NullCaption, OutputType
from pixart_jax.pipelines.text_to_image import ImagePipelineOutput, check_pipeline_directory
from pixart_jax.samplers import from_scheduler_config, to_scheduler_config
from pixart_jax.seeds import random_seed
from pixart_jax.torch.control import encode_control
from pixart_jax.torch.controlnet import PixArtControlNetTransformer, load_controlnet
from pixart_jax.torch.devices import check_device
from pixart_jax.torch.loading import release, to_torch
from pixart_jax.torch.lora import TORCH_LORA
from pixart_jax.torch.memory import MemoryStages
from pixart_jax.torch.noise import call_noise
from pixart_jax.torch.text_encoder import load_text_encoder
from pixart_jax.torch.transformer import load_transformer
from pixart_jax.weights.controlnet import base_config
from pixart_jax.weights.transformer import default_null_caption, transformer_config
from pixart_jax.weights.vae import read_vae_config


@dataclasses.dataclass
class TorchPipelineOutput(ImagePipelineOutput):
    """ImagePipelineOutput plus, when the call asked for it, `memory`: one StageMemory per stage that ran."""
    memory: list | None = None


def diffusers_scheduler(path_or_dict, sampler=None, **options):
    """The diffusers scheduler equal to `from_scheduler_config(path_or_dict, sampler, **options)` (the same checks,
    defaults and overrides; η / γ are not part of a scheduler but of each call, as in diffusers). ValueError for a
    sampler diffusers has no scheduler for (the repo's IDDPM sampler, the repo conventions)."""
    chosen = from_scheduler_config(path_or_dict, sampler=sampler, **options)
    per_call = {f.name: f.default for f in dataclasses.fields(chosen) if f.name in PER_CALL_FIELDS}
    config = to_scheduler_config(dataclasses.replace(chosen, **per_call))
    return getattr(diffusers, config["_class_name"]).from_config(config)


PER_CALL_FIELDS = ("eta", "gamma")  # DDIM's η, TCD's and PCM's γ: arguments of each step, not scheduler config


def guide(out_uncond, out_cond, scale, channels=None):
    """pixart_jax.pipelines.guidance.guide on torch tensors: out_u + scale (out_c - out_u) on the first `channels`
    channels (None: all), the rest from the conditional half."""
    guided = out_uncond + scale * (out_cond - out_uncond)
    if channels is None:
        return guided
    return torch.cat([guided[:, :channels], out_cond[:, channels:]], dim=1)


def resize_and_crop(images, height, width):
    """pixart_jax.images.resize_and_crop with PyTorch's own bilinear resize (what it reproduces)."""
    h, w = images.shape[2:]
    if (h, w) == (height, width):
        return images
    size, (top, left) = cover_and_crop(h, w, height, width)
    resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return resized[:, :, top:top + height, left:left + width]


HED_MISSING = ("control 'hed' is for the JAX pipeline (the PyTorch path has no HED network): use "
               "PixArtControlNetPipeline, or pass an edge map with control='none' or control_latents")
PLAIN_CONTROL = ("control_image and control_latents need a ControlNet-Transformer: load one with "
                 "PixArtTorchPipeline.from_pretrained(..., controlnet=PATH)")


@dataclasses.dataclass(frozen=True)
class ComponentConfigs:
    """What a pipeline knows of the transformer and VAE it loads per call (low_memory): the transformer's
    PixArtConfig (its base's, for a ControlNet), the VAE's config, and whether the transformer is a
    ControlNet-Transformer."""
    cfg: PixArtConfig
    vae_config: VAEConfig
    controlnet: bool = False


class PixArtTorchPipeline(LoRAMethods):
    """transformer (PixArtTransformer2DModel, or a PixArtControlNetTransformer: then each call takes a control
    image), text_encoder (T5EncoderModel), tokenizer, vae (AutoencoderKL) and a diffusers scheduler on `device`.
    Components are read at every call (`pipe.transformer = other` takes effect). With `loaders` ({component: () ->
    module}) a component that is None is loaded for its stage and freed after it (low_memory); `configs` then
    describe the transformer and VAE without loading them. The JAX pipelines' LoRA methods (load_lora_weights,
    set_adapters, fuse_lora, ...) act, through PEFT, on the transformer (a ControlNet's base)."""

    lora_backend = TORCH_LORA

    def __init__(self, transformer, text_encoder, tokenizer, vae, scheduler, *, device="cpu", dtype=torch.float32,
                 loaders=None, configs: ComponentConfigs | None = None):
        self.transformer, self.text_encoder, self.tokenizer, self.vae = transformer, text_encoder, tokenizer, vae
        self.scheduler = scheduler
        self.device, self.dtype = check_device(device), dtype
        self.loaders = dict(loaders or {})
        self.configs = configs
        self.prompt_cache = PromptCache()  # off; e.g. PromptCache(256) keeps that many prompts' embeddings
        self._default_null = None

    @classmethod
    def from_pretrained(cls, directory: str, device="cpu", dtype=torch.float32, int8: bool = False,
                        low_memory: bool = False, sampler: str | None = None,
                        int8_backend: Int8Backend | str = Int8Backend.weight_only, controlnet: str | None = None,
                        lora=None, **sampler_options) -> "PixArtTorchPipeline":
        """The pipeline directory `PixArtPipeline.from_pretrained` reads (model_index.json, transformer/ in the
        diffusers or pixart-jax layout, text_encoder/ float or int8, tokenizer/, vae/, scheduler/).

        dtype: torch.float16 / bfloat16 / float32 (or its name). int8: T5 as int8 (int8_backend "weight-only":
        pixart_jax's codes, the JAX pipeline's numbers; "bitsandbytes": transformers' LLM.int8, experimental
        below compute capability 7.5). low_memory: load nothing now; each call loads T5, encodes, frees it, loads
        the transformer, denoises, frees it, loads the VAE, decodes, frees it (the reference 8-bit recipe: the
        three never share the device, at the price of reading each from disk per call). sampler: "dpm", "ddim"
        or "lcm" instead of the scheduler config's class; sampler_options as in PixArtPipeline. controlnet: a
        PixArt ControlNet checkpoint (any layout pixart_jax.load_controlnet reads) as the transformer, in place of
        the directory's, as PixArtControlNetPipeline.from_pretrained. lora: LoRA adapters loaded now, each as
        load_lora_weights loads it (default_0, default_1, ..., all active): a path, or a list of paths and
        (path, scale) pairs; every path and scale is checked before anything loads.
        """
        check_pipeline_directory(directory)
        adapters = lora_adapters(lora)
        if adapters and low_memory:
            raise ValueError("lora= needs the transformer resident: low_memory loads a fresh one for every call")
        device = check_device(device)
        dtype = choose(TorchDType, str(dtype).removeprefix("torch."), "dtype").torch
        int8_backend = choose(Int8Backend, int8_backend, "int8_backend")
        path = functools.partial(os.path.join, directory)
        if controlnet is None:
            cfg, transformer = transformer_config(path("transformer")), functools.partial(
                load_transformer, path("transformer"), device, dtype)
        else:
            cfg, transformer = base_config(controlnet), functools.partial(load_controlnet, controlnet, None, device,
                                                                          dtype)
        vae_config = read_vae_config(path("vae"))
        scheduler = diffusers_scheduler(path("scheduler"), sampler, **sampler_options)
        loaders = {
            "text_encoder": functools.partial(load_text_encoder, path("text_encoder"), device, dtype, int8,
                                              int8_backend),
            "transformer": transformer,
            "vae": functools.partial(_load_vae, path("vae"), device, dtype),
        }
        resident = {name: None if low_memory else load() for name, load in loaders.items()}
        pipe = cls(**resident, tokenizer=load_tokenizer(path("tokenizer")), scheduler=scheduler, device=device,
                   dtype=dtype, loaders=loaders, configs=ComponentConfigs(cfg, vae_config, controlnet is not None))
        for adapter, scale in adapters:
            pipe.load_lora_weights(adapter, scale=scale)
        return pipe

    @property
    def cfg(self):
        """The transformer's PixArtConfig."""
        if self.transformer is not None:
            return PixArtConfig.from_diffusers(dict(self.transformer.config))
        return self.configs.cfg

    @property
    def lora_model(self):
        """The PixArtTransformer2DModel adapters go on: the transformer, or a ControlNet's base."""
        if self.transformer is None:  # low_memory loads a fresh one per call, which would not hold them
            raise ValueError("LoRA adapters need a resident transformer: from_pretrained without low_memory")
        return self.transformer.base_model if self.has_controlnet else self.transformer

    @property
    def has_controlnet(self):
        """Whether the transformer (loaded or not) is a ControlNet-Transformer, whose calls take a control."""
        if self.transformer is not None:
            return isinstance(self.transformer, PixArtControlNetTransformer)
        return self.configs.controlnet

    @property
    def vae_scale_factor(self):
        if self.vae is not None:
            return 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.configs.vae_config.spatial_factor

    def _use(self, name, run):
        """run(component): the resident component, or (low_memory) one loaded for this call and freed after."""
        module = getattr(self, name)
        if module is not None:
            return run(module)
        if name not in self.loaders:
            raise ValueError(f"this pipeline has no {name} (and nothing to load it from)")
        try:
            return run(self.loaders[name]())
        finally:
            release(self.device)

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str = "",
                 num_inference_steps: int = 20, guidance_scale: float = 4.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, seed: int | None = None, latents=None,
                 output_type: str = "pil", use_resolution_binning: bool = True, clean_caption: bool = True,
                 prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                 negative_prompt_attention_mask=None, null_caption: str = "negative_prompt",
                 guidance_channels: int | None = None, eta: float = 0.0, progress: bool = True,
                 return_dict: bool = True, memory_report: bool = False, control_image=None,
                 control: str = ControlKind.canny, control_latents=None, max_sequence_length: int | None = None,
                 noise: NoiseSource | str = NoiseSource.jax):
        """Generates images; arguments and results as PixArtPipeline.__call__, except: `noise` "jax" (default)
        draws the initial latents and any sampler noise of `seed` exactly as the JAX pipeline does (one seed, one
        image on both backends), "torch" from a torch.Generator("cpu") seeded with `seed`, as diffusers does with
        that generator; "latent" output is a float32 tensor on the device; `memory_report` puts each stage's peak
        memory in the output's `memory`.
        With a ControlNet-Transformer: `control_image`, `control` ("canny" or "none"; "hed" is JAX-only) or
        `control_latents`, as PixArtControlNetPipeline.__call__ (the posterior noise of the control image's VAE
        encoding as the JAX pipeline draws it from `seed`)."""
        request = GenerationRequest.from_call(locals())
        return self.generate(request, progress=progress, return_dict=return_dict, memory_report=memory_report,
                             noise=noise)

    def generate(self, request: GenerationRequest, *, progress: bool = True, return_dict: bool = True,
                 memory_report: bool = False, noise: NoiseSource | str = NoiseSource.jax):
        """Runs one GenerationRequest (what __call__ does with its arguments); a ValueError before anything is
        loaded for a request this pipeline cannot run."""
        noise = choose(NoiseSource, noise, "noise")
        sizes = self._sizes(request)
        stages = MemoryStages(self.device, memory_report)
        captions = self._captions(request, stages)
        seed = random_seed() if request.seed is None else request.seed
        draws = call_noise(noise, seed, self.device)
        latents = request.latents
        if latents is None:
            latents = draws.latents(sizes.latent_shape)
        latents = self._tensor(latents)
        control = None if request.control is None else self._control(request, sizes, seed, stages)
        with stages.stage("denoise"):
            result = self._use("transformer", lambda transformer: self._denoise(
                transformer, latents, captions, request, (sizes.height, sizes.width), draws, control, progress))
        if request.decoded:
            with stages.stage("decode"):
                result = self._use("vae", lambda vae: self._decode(vae, result, sizes.out_size))
            result = result if request.output_type == OutputType.np else pil_images(result)
        memory = stages.stages if memory_report else None
        return TorchPipelineOutput(result, memory) if return_dict else (result,)

    def _sizes(self, request):
        """request.sizes for this transformer and VAE, after its control is checked (one exactly with a
        ControlNet-Transformer)."""
        if not self.has_controlnet:
            if request.control is not None:
                raise ValueError(PLAIN_CONTROL)
        else:
            check_control(request.control, HED_MISSING)
        return request.sizes(self.cfg, self.vae_scale_factor)

    def _captions(self, request, stages):
        """(cond, uncond) as (embeds, mask) per image (uncond None: the transformer's null caption): the prompts
        encoded in an "encode" stage, or the given embeddings."""
        if request.prompt_embeds is None:
            max_length = request.tokens(self.cfg)
            with stages.stage("encode"):
                cond, uncond = self.prompt_cache.get(prompt_key(request, max_length), self._encoder_owners(),
                                                     lambda: self._encode(request, max_length))
        else:
            cond = (self._tensor(request.prompt_embeds), self._tensor(request.prompt_attention_mask))
            uncond = None if request.negative_prompt_embeds is None else (
                self._tensor(request.negative_prompt_embeds), self._tensor(request.negative_prompt_attention_mask))
        per_prompt = request.num_images_per_prompt
        cond = tuple(a.repeat_interleave(per_prompt, 0) for a in cond)
        if uncond is not None:
            uncond = tuple(a.repeat_interleave(per_prompt, 0) for a in uncond)
        return cond, uncond

    def _control(self, request, sizes, seed, stages):
        """(images, C, h, w) float32 control latents at the binned size: the given ones, or the control images'
        (fitted, edge maps, VAE-encoded) in a "control" stage."""
        latents = request.control.latents
        if latents is None:
            with stages.stage("control"):
                pixels = request.control.pixels(sizes.height, sizes.width)
                latents = self._use("vae", lambda vae: encode_control(vae, pixels, seed))
        latents = self._tensor(latents)
        rows = control_rows(len(latents), request.prompts, request.num_images_per_prompt)
        return latents[torch.from_numpy(rows).to(self.device)]

    def _tensor(self, value):
        return torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value,
                               dtype=torch.float32).to(self.device)

    def _encoder_owners(self):
        """What cached embeddings belong to: the tokenizer and the resident T5 (low_memory: its loader)."""
        return self.tokenizer, self.text_encoder if self.text_encoder is not None else self.loaders.get("text_encoder")

    def _encode(self, request, max_length):
        """(cond, uncond) as (embeds float32 (B, L, C), mask (B, L)); uncond None: the null caption with the
        prompts' mask (resolved with the transformer, which holds it). T5 runs as far as the longest prompt needs
        (pixart_jax.pipelines.prompts._encode's trim: the same images)."""
        tokens = prompt_tokens(request.prompt, request.negative_prompt, tokenizer=self.tokenizer,
                               max_length=max_length, clean_caption=request.clean_caption,
                               negatives=request.null_caption != NullCaption.y_embedding)
        ids, mask = tokens.ids, tokens.mask
        if tokens.negative_ids is not None:  # one encoder call for both branches, as the JAX pipeline
            ids, mask = np.concatenate([ids, tokens.negative_ids]), np.concatenate([mask, tokens.negative_mask])
        run = trimmed_length(mask, max_length)

        def encode(encoder):
            with torch.inference_mode():
                out = encoder(input_ids=torch.from_numpy(ids[:, :run]).long().to(self.device),
                              attention_mask=torch.from_numpy(mask[:, :run]).long().to(self.device))
            return F.pad(out.last_hidden_state.float(), (0, 0, 0, max_length - run))

        embeds = self._use("text_encoder", encode)
        mask = torch.from_numpy(mask).float().to(self.device)
        batch = tokens.ids.shape[0]
        cond = (embeds[:batch], mask[:batch])
        return cond, None if tokens.negative_ids is None else (embeds[batch:], mask[batch:])

    def _null_caption(self, transformer):
        """The transformer's y_embedding, or (diffusers checkpoints have none) the JAX loader's default."""
        stored = getattr(transformer, "y_embedding", None)
        if stored is not None:
            return stored.float()
        if self._default_null is None:
            self._default_null = default_null_caption(PixArtConfig.from_diffusers(dict(transformer.config)))
        return to_torch(self._default_null, self.device)

    @torch.inference_mode()
    def _denoise(self, transformer, latents, captions, request, size, draws, control, progress):
        """The denoising loop: the final latents (float32) of `latents` under request's steps, guidance and η, at
        the binned (height, width) `size`, the sampler noise from `draws` (a torch.noise source); `control` the
        control latents per image (None: no ControlNet)."""
        steps, guided, scale = request.num_inference_steps, request.guided, request.guidance_scale
        inputs = self._model_inputs(transformer, captions, guided, size, control)
        rows = inputs["encoder_hidden_states"].shape[0]
        scheduler = self.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        x = latents
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", disable=not progress)):
            model_in = scheduler.scale_model_input(x, t)
            model_in = torch.cat([model_in, model_in]) if guided else model_in
            out = transformer(model_in.to(self.dtype), timestep=t.expand(rows).to(self.device), return_dict=False,
                              **inputs)[0].float()
            if guided:
                out = guide(*out.chunk(2), scale, request.guidance_channels)
            step = draws.step(scheduler, out[:, :x.shape[1]], t, x, index=i, steps=steps, eta=request.eta)
            # one step returns its denoised estimate, as diffusers' pipeline (and ours) do
            x = step[1] if steps == 1 and len(step) > 1 else step[0]
        return x.float()

    def _model_inputs(self, transformer, captions, guided, size, control):
        """The transformer's keyword inputs besides the latents and timestep, [uncond, cond] when `guided`."""
        cond, uncond = captions
        if uncond is None:
            uncond = (self._null_caption(transformer).expand_as(cond[0]), cond[1])
        embeds, mask = (torch.cat([u, c]) for u, c in zip(uncond, cond)) if guided else cond
        rows = embeds.shape[0]
        added = {"resolution": None, "aspect_ratio": None}
        if transformer.config.use_additional_conditions:
            added = {"resolution": torch.tensor([size], dtype=torch.float32, device=self.device).repeat(rows, 1),
                     "aspect_ratio": torch.full((rows, 1), size[0] / size[1], device=self.device)}
        inputs = dict(encoder_hidden_states=embeds.to(self.dtype), encoder_attention_mask=mask,
                      added_cond_kwargs=added)
        if control is not None:  # the same control latents in both guidance halves
            inputs["control_latents"] = (torch.cat([control, control]) if guided else control).to(self.dtype)
        return inputs

    @torch.inference_mode()
    def _decode(self, vae, latents, out_size):
        """(N, H, W, 3) float32 in [0, 1] on the host, as output_type="np"."""
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0].float()
        images = resize_and_crop(images, *out_size)
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _load_vae(directory, device, dtype):
    read_vae_config(directory)  # the same checks (and errors) as the JAX loader
    vae = diffusers.AutoencoderKL.from_pretrained(directory, torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)
