"""ControlNet text-to-image: `PixArtControlNetPipeline`, a PixArtPipeline whose transformer is a PixArt
ControlNet-Transformer and whose call takes a control image (spec §5.5).

    pipe = PixArtControlNetPipeline.from_pretrained("PixArt-XL-2-1024-MS", controlnet="PixArt-XL-2-1024-ControlNet.pth",
                                                    hed="ControlNetHED.pth")
    image = pipe("a small house by a lake", control_image="house.jpg", control="hed", num_inference_steps=14).images[0]

A pipeline class rather than a `controlnet=` component beside the transformer: the released ControlNet is one
network (its checkpoint holds its own frozen base, `base_model.*`) whose copies feed the base's residual stream
between blocks, not a side network whose residuals a separate transformer adds. A `controlnet=` component would hold
a second copy of the base or have to be kept equal to the pipeline's transformer; as diffusers keeps its ControlNet
pipelines as classes of their own (StableDiffusionControlNetPipeline beside StableDiffusionPipeline), this class
swaps the transformer for the ControlNet and adds the control image to the call.

The control image is fitted to the binned size (resized to cover it, centre-cropped), turned into an edge map,
VAE-encoded (a posterior sample × scaling factor, as the reference app) and the same control latents go into both
halves of classifier-free guidance; the denoising loop is PixArtPipeline's one jitted function.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.choices import choose
from pixart_jax.control import ControlKind, control_latents, control_pixels, edge_maps, fit, read_image
from pixart_jax.controlnet import PixArtControlNet
from pixart_jax.controlnet_checkpoints import load_controlnet
from pixart_jax.hed import load_hed
from pixart_jax.pipeline import PixArtPipeline, check_pipeline_directory, load_components


@dataclasses.dataclass
class ControlRequest:
    """One call's control: images (a list of (H, W, 3) uint8) with their edge-map kind, or ready latents."""
    images: list | None
    kind: ControlKind
    latents: jnp.ndarray | None


def _prompt_count(prompt, prompt_embeds):
    if prompt_embeds is not None:
        return int(np.shape(prompt_embeds)[0])
    return 1 if isinstance(prompt, str) else len(prompt or ())


@dataclasses.dataclass
class PixArtControlNetPipeline(PixArtPipeline):
    """PixArtPipeline's components with a PixArtControlNet as `transformer`, plus `hed` (a pixart_jax.hed.HED) for
    control "hed"."""

    hed: object = None

    def __post_init__(self):
        super().__post_init__()
        self._control = None  # this call's ControlRequest while it runs
        self._edges = nnx.jit(lambda hed, pixels: hed(pixels))
        self._encode = nnx.jit(control_latents)

    @classmethod
    def from_pretrained(cls, directory: str, controlnet: str, hed: str | None = None, dtype=jnp.float32,
                        sampler: str | None = None, **sampler_options) -> "PixArtControlNetPipeline":
        """The text encoder, tokenizer, VAE and scheduler of a diffusers PixArt pipeline directory, with the
        ControlNet `controlnet` (any layout load_controlnet reads) as transformer and, for control "hed", the HED
        network of `hed` (ControlNetHED.pth)."""
        check_pipeline_directory(directory)
        components = load_components(directory, dtype, sampler, **sampler_options)  # tokenizer files checked first
        return cls(transformer=load_controlnet(controlnet, dtype=dtype), hed=load_hed(hed, dtype) if hed else None,
                   **components)

    def __call__(self, prompt=None, control_image=None, control: str = ControlKind.canny, control_latents=None,
                 **kwargs):
        """PixArtPipeline's call (same arguments and output) with a control: `control_image` (a path, PIL image or
        (H, W[, 3]) array; one, or one per prompt) made into an edge map by `control` ("canny", "hed", or "none":
        the image already is one) at the binned size; or `control_latents` (1 or one per prompt, C, h, w), already
        VAE-encoded and scaled. height and width default to the control image's size (rounded down to multiples
        of 8), which the output then has."""
        self._control = self._check_control(control_image, control, control_latents,
                                            _prompt_count(prompt, kwargs.get("prompt_embeds")))
        if self._control.images is not None:
            size = [side // 8 * 8 or 8 for side in self._control.images[0].shape[:2]]
        else:
            size = [side * self.vae_scale_factor for side in self._control.latents.shape[2:]]
        for name, side in zip(("height", "width"), size):
            if kwargs.get(name) is None:
                kwargs[name] = side
        try:
            return super().__call__(prompt, **kwargs)
        finally:
            self._control = None

    def _check_control(self, control_image, control, latents, prompts):
        """The call's ControlRequest; a ValueError for anything wrong with it, before any compute."""
        if not isinstance(self.transformer, PixArtControlNet):
            raise ValueError(f"the transformer is a {type(self.transformer).__name__}, not a PixArtControlNet: load "
                             "one with pixart_jax.load_controlnet")
        if (control_image is None) == (latents is None):
            raise ValueError("pass either control_image or control_latents")
        kind = choose(ControlKind, control, "control")
        if latents is not None:
            latents = jnp.asarray(latents, jnp.float32)
            channels = self.transformer.cfg.in_channels
            if latents.ndim != 4 or latents.shape[1] != channels or latents.shape[0] not in (1, prompts):
                raise ValueError(f"control_latents must have shape (1 or {prompts} prompts, {channels}, h, w), got "
                                 f"{tuple(latents.shape)}")
            return ControlRequest(None, kind, latents)
        if kind == ControlKind.hed and self.hed is None:
            raise ValueError("control 'hed' needs the HED network: pass hed= (ControlNetHED.pth) to from_pretrained")
        images = control_image if isinstance(control_image, (list, tuple)) else [control_image]
        if len(images) not in (1, prompts):
            raise ValueError(f"pass one control image or one per prompt ({prompts}), got {len(images)}")
        return ControlRequest([read_image(image) for image in images], kind, None)

    def _shared_inputs(self, prompts, per_prompt, height, width, key):
        """{"control": (prompts · per_prompt, C, h, w)} scaled control latents at the binned size."""
        request = self._control
        latents = request.latents
        if latents is None:
            images = np.stack([fit(image, height, width) for image in request.images])
            edges = edge_maps(images, request.kind, lambda pixels: self._edges(self.hed, pixels))
            latents = self._encode(self.vae, control_pixels(edges), key)
        shape = (self.transformer.cfg.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if tuple(latents.shape[1:]) != shape:
            raise ValueError(f"control_latents must be (.., {shape[0]}, {shape[1]}, {shape[2]}) for a {height}x{width} "
                             f"image, got {tuple(latents.shape)}")
        latents = jnp.broadcast_to(latents, (prompts, *shape))
        return {"control": jnp.repeat(latents, per_prompt, axis=0)}
