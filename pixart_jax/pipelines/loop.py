"""The compiled part of a PixArtPipeline call: the denoising loop (classifier-free guidance batched in one forward),
the VAE decode and the resize-back of resolution binning. `LoopInputs` are its arrays (a pytree: the batch rows,
the guidance scale, the sampler's key, the shared model inputs); `LoopSpec` is what it is compiled for (static:
one program per steps, sampler, guidance on/off, output size, ...)."""
import dataclasses
from typing import Any, NamedTuple

import jax

from pixart_jax.images import resize_and_crop
from pixart_jax.pipelines.guidance import Caption, guide, guided_forward


class LoopInputs(NamedTuple):
    """latents (N, C, h, w); cond and uncond Captions (N, L, C) / (N, L); resolution (N, 2) and aspect_ratio (N, 1)
    of a micro-conditioned transformer (else None); guidance_scale (); key, the sampler's noise (one key per
    request with LoopSpec.groups); shared, extra
    model inputs the same in both guidance halves ({name: (N, ...)}, e.g. a ControlNet's control latents)."""
    latents: Any
    cond: Caption
    uncond: Caption
    resolution: Any
    aspect_ratio: Any
    guidance_scale: Any
    key: Any
    shared: dict


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """steps of `sampler` (one step returns its denoised estimate); `guided`: classifier-free guidance, on
    `guidance_channels` channels (None: every ε channel); `decode`: through the VAE and resized to `out_size`
    (height, width), else the latents; `progress`: a host callback per model call; `groups`: the row counts of
    independent requests batched together, each with its own sampler key (None: one request, one key)."""
    steps: int
    sampler: Any
    guided: bool
    out_size: tuple[int, int]
    guidance_channels: int | None = None
    decode: bool = True
    progress: bool = False
    groups: tuple[int, ...] | None = None


def run_loop(transformer, vae, inputs: LoopInputs, spec: LoopSpec, tick=None):
    """The images (N, 3, H, W) in [-1, 1] at spec.out_size, or the final latents; `tick()` per model call when
    spec.progress."""
    latents, cond, uncond = inputs.latents, inputs.cond, inputs.uncond
    resolution, aspect_ratio, shared = inputs.resolution, inputs.aspect_ratio, inputs.shared
    sampler = spec.sampler
    channels = sampler.model_output_shape(latents.shape)[1]

    def model_fn(x, t):
        if spec.progress:
            jax.debug.callback(tick)
        if not spec.guided:
            return transformer(x, t, cond.embeds, cond.mask, resolution, aspect_ratio, **shared)[:, :channels]
        out_uncond, out_cond = guided_forward(transformer, x, t, cond, uncond, resolution=resolution,
                                              aspect_ratio=aspect_ratio, **shared)
        # the variance channels of a learned-sigma model come from the conditional half
        return guide(out_uncond, out_cond, inputs.guidance_scale,
                     spec.guidance_channels or latents.shape[1])[:, :channels]

    noise_key = inputs.key if sampler.needs_noise(spec.steps) else None
    latents = sampler.sample(model_fn, latents, spec.steps, key=noise_key, return_denoised=spec.steps == 1,
                             groups=spec.groups)
    if not spec.decode:
        return latents
    images = vae.decode(latents / vae.scaling_factor)
    return resize_and_crop(images, *spec.out_size)
