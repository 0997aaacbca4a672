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

from pixart_jax.models.controlnet import PixArtControlNet
from pixart_jax.models.inference_jit import inference_jit
from pixart_jax.pipelines.control import ControlKind, check_control, control_latents, control_rows
from pixart_jax.pipelines.text_to_image import PixArtPipeline, check_pipeline_directory, load_components
from pixart_jax.weights.controlnet import load_controlnet
from pixart_jax.weights.hed import load_hed

HED_MISSING = "control 'hed' needs the HED network: pass hed= (ControlNetHED.pth) to from_pretrained"


@dataclasses.dataclass
class PixArtControlNetPipeline(PixArtPipeline):
    """PixArtPipeline's components with a PixArtControlNet as `transformer`, plus `hed` (a pixart_jax.models.hed.HED)
    for control "hed"."""

    hed: object = None

    def __post_init__(self):
        super().__post_init__()
        self._edges = inference_jit(lambda hed, pixels: hed(pixels))
        self._encode = inference_jit(control_latents)

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

    @property
    def lora_model(self):
        """LoRA adapters go on the base (what they were trained on); the copies are the ControlNet's own weights."""
        return self.transformer.base

    def __call__(self, prompt=None, control_image=None, control: str = ControlKind.canny, control_latents=None,
                 **kwargs):
        """PixArtPipeline's call (same arguments and output) with a control: `control_image` (a path, PIL image or
        (H, W[, 3]) array; one, or one per prompt) made into an edge map by `control` ("canny", "hed", or "none":
        the image already is one) at the binned size; or `control_latents` (1 or one per prompt, C, h, w), already
        VAE-encoded and scaled. height and width default to the control image's size (rounded down to multiples
        of 8), which the output then has."""
        return super().__call__(prompt, control_image=control_image, control=control,
                                control_latents=control_latents, **kwargs)

    def _check_control(self, control):
        """A ControlNet-Transformer, a control, and the HED network for control images of kind "hed"."""
        if not isinstance(self.transformer, PixArtControlNet):
            raise ValueError(f"the transformer is a {type(self.transformer).__name__}, not a PixArtControlNet: load "
                             "one with pixart_jax.load_controlnet")
        check_control(control, None if self.hed else HED_MISSING)

    def _shared_inputs(self, request, sizes, key):
        """{"control": (images, C, h, w)} scaled control latents at the binned size."""
        control = request.control
        if control.latents is None:
            pixels = control.pixels(sizes.height, sizes.width, lambda pixels: self._edges(self.hed, pixels))
            latents = self._encode(self.vae, pixels, key)
        else:
            latents = jnp.asarray(control.latents, jnp.float32)
        return {"control": latents[control_rows(latents.shape[0], request.prompts, request.num_images_per_prompt)]}
