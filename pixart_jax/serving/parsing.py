"""A request body (schema.GenerationBody) → a Job: the library's GenerationRequest (its checks, not a copy of them)
plus the server's limits, every field checked before the job is queued; a 400 APIError naming the field."""
import dataclasses
import math
import re

from pixart_jax.pipelines.batching import loop_signature
from pixart_jax.pipelines.control import control_request
from pixart_jax.pipelines.request import BIN_TABLES, GenerationRequest
from pixart_jax.seeds import random_seed
from pixart_jax.serving.errors import APIError
from pixart_jax.serving.images import decode_upload

SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
# the library's argument names (as its ValueErrors start) → the API field they come from
API_FIELDS = {"num_images_per_prompt": "n", "height": "size", "width": "size", "control_latents": "control_image"}
UPLOAD_PIXELS_PER_IMAGE_PIXEL = 16  # a control image may be this much larger than the image it guides


@dataclasses.dataclass(eq=False)
class Job:
    """One parsed request: the GenerationRequest, the settings it resolved to (returned with its images), the
    sampler and adapter weights it runs with, and its `signature` (jobs with equal ones can share a forward)."""
    request: GenerationRequest
    settings: dict
    scheduler: str
    lora_scales: tuple[tuple[str, float], ...]
    signature: tuple

    @property
    def images(self) -> int:
        return self.request.images


def parse_generation(body, info, limits) -> Job:
    """The Job of `body` for a model described by `info` (ModelInfo) under `limits`; a 400 APIError naming the
    first bad field."""
    _check_text(body, limits)
    if body.response_format != "b64_json":
        raise APIError(400, f"response_format must be 'b64_json' (the server keeps no files), got "
                            f"{body.response_format!r}", "response_format")
    if not 1 <= body.n <= limits.max_images:
        raise APIError(400, f"n must be from 1 to {limits.max_images}, got {body.n}", "n")
    defaults = info.defaults
    size = body.size or defaults["size"]
    width, height = _size(size, info, limits)
    steps = defaults["num_inference_steps"] if body.num_inference_steps is None else body.num_inference_steps
    if steps > limits.max_steps:
        raise APIError(400, f"num_inference_steps must be at most {limits.max_steps}, got {steps}",
                       "num_inference_steps")
    scheduler = body.scheduler or defaults["scheduler"]
    if scheduler not in info.samplers:
        raise APIError(400, f"scheduler must be one of {list(info.samplers)}, got {scheduler!r}", "scheduler")
    lora_scales = _lora_scales(body.lora_scales, info.loras)
    seed = random_seed() if body.seed is None else body.seed
    guidance = defaults["guidance_scale"] if body.guidance_scale is None else body.guidance_scale
    fields = dict(prompt=body.prompt, negative_prompt=body.negative_prompt, num_inference_steps=steps,
                  guidance_scale=guidance, height=height, width=width, num_images_per_prompt=body.n, seed=seed,
                  eta=body.eta, use_resolution_binning=info.cfg.sample_size in BIN_TABLES)
    try:
        request = GenerationRequest(**fields, control=_control(body, info, limits, width * height))
        sizes = request.sizes(info.cfg, info.vae_scale)
    except ValueError as e:
        raise APIError(400, str(e), _field(str(e))) from None
    settings = dict(fields, size=size, n=body.n, scheduler=scheduler, lora_scales=dict(lora_scales),
                    control=body.control if request.control else None, model=info.name)
    for name in ("height", "width", "num_images_per_prompt", "use_resolution_binning"):
        del settings[name]
    return Job(request, settings, scheduler, lora_scales, (loop_signature(request, sizes), scheduler, lora_scales))


def _check_text(body, limits):
    for name in ("prompt", "negative_prompt"):
        if len(getattr(body, name)) > limits.max_prompt_chars:
            raise APIError(400, f"{name} has {len(getattr(body, name))} characters, more than max_prompt_chars "
                                f"({limits.max_prompt_chars})", name)
    if not body.prompt.strip():
        raise APIError(400, "prompt must not be empty", "prompt")


def _size(text, info, limits):
    """(width, height) of "WxH": one of the model's buckets, within max_pixels."""
    match = SIZE.fullmatch(text)
    if not match:
        raise APIError(400, f"size must be WIDTHxHEIGHT (e.g. {info.defaults['size']}), got {text!r}", "size")
    width, height = int(match[1]), int(match[2])
    if (width, height) not in info.sizes:
        shown = ", ".join(f"{w}x{h}" for w, h in info.sizes[:6])
        raise APIError(400, f"size {text} is not one of this model's aspect-ratio buckets ({shown}, ...: "
                            "/v1/config lists them)", "size")
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise APIError(400, f"size {text} has {width * height} pixels, more than max_pixels ({limits.max_pixels})",
                       "size")
    return width, height


def _lora_scales(given, loras):
    """((name, scale), ...) of every adapter: its load scale unless `given` sets it."""
    given = given or {}
    for name, scale in given.items():
        if name not in loras:
            raise APIError(400, f"lora_scales: no adapter {name!r} (loaded: {sorted(loras)})", "lora_scales")
        if not math.isfinite(scale):
            raise APIError(400, f"lora_scales[{name!r}] must be a finite number, got {scale}", "lora_scales")
    return tuple((name, float(given.get(name, scale))) for name, scale in loras.items())


def _control(body, info, limits, pixels):
    """The ControlRequest of the control image (decoded in memory), or None without one."""
    if not info.controlnet:
        if body.control_image is not None:
            raise APIError(400, "control_image needs a server started with --controlnet", "control_image")
        return None
    if body.control_image is None:
        raise APIError(400, "this ControlNet server needs a control_image (base64 PNG or JPEG)", "control_image")
    if body.control not in info.control_modes:
        raise APIError(400, f"control must be one of {list(info.control_modes)}, got {body.control!r}", "control")
    image = decode_upload(body.control_image, limits.max_upload_bytes, pixels * UPLOAD_PIXELS_PER_IMAGE_PIXEL)
    return control_request(image, body.control)


def _field(message):
    """The API field a library ValueError names (its first word), or None."""
    word = message.split(" ", 1)[0].strip(":,")
    return API_FIELDS.get(word, word if word in SETTABLE else None)


SETTABLE = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "eta", "control",
            "control_image")
