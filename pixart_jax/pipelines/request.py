"""One generation request: the arguments of a text-to-image call as one checked value, which every pipeline (JAX and
PyTorch, plain and ControlNet), the command line and a server build and read the same way.

    request = GenerationRequest(prompt="a small house by a lake", num_inference_steps=14, seed=0)  # checked here
    sizes = request.sizes(transformer_cfg, vae_scale)  # the checks that need the model's shapes (its config files)
    images = pipe.generate(request).images

Built, a request has checked everything that does not depend on the model (prompts, steps, guidance, sizes given,
seed, choices, control image count); `sizes` checks the rest against a transformer config and a VAE factor (bins
the size, checks given embeddings, latents and control latents) without any weights. Its fields carry the diffusers
call's names; `control` is a ControlRequest (pixart_jax.pipelines.control.control_request of the call's
control_image, control and control_latents).
"""
import dataclasses
import enum
import math
import numbers
from typing import Any

import numpy as np

from pixart_jax.choices import choose
from pixart_jax.pipelines.aspect_ratios import TEST_TABLES, bin_size
from pixart_jax.pipelines.control import ControlRequest, check_control_latents, control_request
from pixart_jax.seeds import check_seed

# by transformer sample_size, as diffusers' pipelines pick them (256: PixArt-Σ 2K)
BIN_TABLES = {256: TEST_TABLES[2048], 128: TEST_TABLES[1024], 64: TEST_TABLES[512], 32: TEST_TABLES[256]}


class OutputType(enum.StrEnum):
    """What a call returns: PIL images, an (N, H, W, 3) array in [0, 1], or the latents."""
    pil = "pil"
    np = "np"
    latent = "latent"


class NullCaption(enum.StrEnum):
    """The unconditional branch of classifier-free guidance."""
    negative_prompt = "negative_prompt"  # T5 of the negative prompt, as diffusers
    y_embedding = "y_embedding"          # the checkpoint's null caption with the prompt's mask, as the original repo


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a request comes to for one model: the (binned) `height` x `width` the images are generated at,
    `out_size` the (height, width) they are returned at, `latent_shape` the initial noise's (images, C, h, w)."""
    height: int
    width: int
    out_size: tuple[int, int]
    latent_shape: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True, eq=False)
class GenerationRequest:
    """A text-to-image call's arguments (PixArtPipeline.__call__ documents each), checked when built: a ValueError
    naming the value for anything wrong. Lists (prompts, negative prompts) are kept as tuples; arrays (embeddings,
    latents) as given."""
    prompt: str | tuple[str, ...] | None = None
    negative_prompt: str | tuple[str, ...] = ""
    num_inference_steps: int = 20
    guidance_scale: float = 4.5
    height: int | None = None
    width: int | None = None
    num_images_per_prompt: int = 1
    seed: int | None = None
    latents: Any = None
    output_type: OutputType = OutputType.pil
    use_resolution_binning: bool = True
    clean_caption: bool = True
    prompt_embeds: Any = None
    prompt_attention_mask: Any = None
    negative_prompt_embeds: Any = None
    negative_prompt_attention_mask: Any = None
    null_caption: NullCaption = NullCaption.negative_prompt
    guidance_channels: int | None = None
    eta: float = 0.0
    max_sequence_length: int | None = None
    control: ControlRequest | None = None

    def __post_init__(self):
        for name in ("prompt", "negative_prompt"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "output_type", choose(OutputType, self.output_type, "output_type"))
        object.__setattr__(self, "null_caption", choose(NullCaption, self.null_caption, "null_caption"))
        if self.seed is not None:
            object.__setattr__(self, "seed", check_seed(self.seed))
        self._check_prompt()
        _check_numbers(self)
        if self.height is not None or self.width is not None:
            check_size(self.height, self.width)
        images = None if self.control is None else self.control.images
        if images is not None and len(images) not in (1, self.prompts):
            raise ValueError(f"pass one control image or one per prompt ({self.prompts}), got {len(images)}")

    @classmethod
    def from_call(cls, arguments: dict) -> "GenerationRequest":
        """The request of a diffusers-style call's `arguments` (its locals(): the request's fields by name, plus
        `control_image`, `control` and `control_latents`; others, such as `self` or `progress`, are not read)."""
        fields = {f.name: arguments[f.name] for f in dataclasses.fields(cls) if f.name != "control"}
        control = control_request(arguments["control_image"], arguments["control"], arguments["control_latents"])
        return cls(**fields, control=control)

    def _check_prompt(self):
        if self.prompt_embeds is None:
            prompts = (self.prompt,) if isinstance(self.prompt, str) else self.prompt
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings, got {self.prompt!r}")

    @property
    def prompts(self) -> int:
        """How many prompts: the rows of `prompt_embeds` when given, else the prompt strings."""
        if self.prompt_embeds is not None:
            return len(self.prompt_embeds)
        return 1 if isinstance(self.prompt, str) else len(self.prompt or ())

    @property
    def images(self) -> int:
        return self.prompts * self.num_images_per_prompt

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (a scale above 1)."""
        return self.guidance_scale > 1.0

    def tokens(self, cfg) -> int:
        """The caption length prompts are padded or truncated to: `max_sequence_length`, else the transformer's
        (`cfg.max_tokens`: 120 for PixArt-α, 300 for PixArt-Σ, diffusers' defaults for each pipeline)."""
        return self.max_sequence_length or cfg.max_tokens

    @property
    def decoded(self) -> bool:
        """Whether the latents go through the VAE (any output but "latent")."""
        return self.output_type != OutputType.latent

    def sizes(self, cfg, vae_scale) -> Sizes:
        """The checks that need the model: `cfg` the transformer's PixArtConfig, `vae_scale` the VAE's pixels per
        latent pixel. Default height and width: the control's, else the transformer's native size."""
        self._check_control_shape(cfg.in_channels)
        if self.control is not None:
            height, width = self.control.size(self.height, self.width, vae_scale)
        else:
            native = cfg.sample_size * vae_scale
            height, width = (native if side is None else side for side in (self.height, self.width))
        check_size(height, width)
        if self.guidance_channels is not None and not 1 <= self.guidance_channels <= cfg.in_channels:
            raise ValueError(f"guidance_channels must be None or in [1, {cfg.in_channels}], got "
                             f"{self.guidance_channels}")
        out_size = (height, width)
        if self.use_resolution_binning:
            height, width = _binned(height, width, cfg.sample_size)
        multiple = vae_scale * cfg.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} (VAE factor {vae_scale} x patch "
                             f"{cfg.patch_size}) without resolution binning, got {height}x{width}")
        self._check_captions((self.tokens(cfg), cfg.caption_channels))
        shape = (self.images, cfg.in_channels, height // vae_scale, width // vae_scale)
        if self.latents is not None and tuple(self.latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(self.latents.shape)}")
        if self.control is not None and self.control.latents is not None:
            check_control_latents(self.control.latents.shape, cfg.in_channels, height, width, vae_scale)
        return Sizes(height, width, out_size, shape)

    def _check_control_shape(self, channels):
        latents = None if self.control is None else self.control.latents
        if latents is not None:
            shape = tuple(latents.shape)
            if len(shape) != 4 or shape[1] != channels or shape[0] not in (1, self.prompts):
                raise ValueError(f"control_latents must have shape (1 or {self.prompts} prompts, {channels}, h, w), "
                                 f"got {shape}")

    def _check_captions(self, expected):
        """Given embeddings against the transformer's (L, C), with their masks."""
        if self.prompt_embeds is None:
            return
        check_caption(self.prompt_embeds, self.prompt_attention_mask, expected, "prompt_embeds",
                      "prompt_attention_mask")
        if self.negative_prompt_embeds is None:
            return
        check_caption(self.negative_prompt_embeds, self.negative_prompt_attention_mask, expected,
                      "negative_prompt_embeds", "negative_prompt_attention_mask")
        if len(self.negative_prompt_embeds) != len(self.prompt_embeds):
            raise ValueError(f"negative_prompt_embeds has batch {len(self.negative_prompt_embeds)}, prompt_embeds "
                             f"{len(self.prompt_embeds)}")


def _check_numbers(request):
    steps, scale, eta = request.num_inference_steps, request.guidance_scale, request.eta
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if not _is_real(scale) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {scale}")
    if not _is_real(eta) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    per_prompt = request.num_images_per_prompt
    if not _is_int(per_prompt) or per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {per_prompt!r}")
    tokens = request.max_sequence_length
    if tokens is not None and (not _is_int(tokens) or tokens < 1):
        raise ValueError(f"max_sequence_length must be None or an integer >= 1, got {tokens!r}")


def check_size(height, width):
    """A ValueError unless each of height and width (None: not given) is a positive multiple of 8."""
    for name, value in (("height", height), ("width", width)):
        if value is not None and (not _is_int(value) or value <= 0 or value % 8):
            shown = "x".join("default" if side is None else repr(side) for side in (height, width))
            raise ValueError(f"{name} must be a positive multiple of 8, got {value!r} (height x width: {shown})")


def check_caption(embeds, mask, expected, name, mask_name):
    """Checks given caption features (B, L, C) against the transformer's expected (L, C) and their mask (B, L)."""
    shape = tuple(np.shape(embeds))
    if len(shape) != 3 or shape[1:] != expected:
        raise ValueError(f"{name} must have shape (batch, {expected[0]}, {expected[1]}) for this transformer, "
                         f"got {shape}")
    if mask is None:
        raise ValueError(f"{name} needs {mask_name} (batch, {expected[0]}) of 0/1: which tokens are real")
    if tuple(np.shape(mask)) != shape[:2]:
        raise ValueError(f"{mask_name} must have shape {shape[:2]}, got {tuple(np.shape(mask))}")


def _binned(height, width, sample_size):
    if sample_size not in BIN_TABLES:
        raise ValueError(f"resolution binning needs a transformer sample_size in {sorted(BIN_TABLES)}, this one "
                         f"has {sample_size}: pass use_resolution_binning=False")
    return bin_size(height, width, BIN_TABLES[sample_size])


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
