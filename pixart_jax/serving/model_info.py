"""What the server tells clients about its model (/v1/config) and checks requests against: the aspect-ratio buckets,
the samplers, the defaults, the ControlNet and the LoRA adapters."""
import dataclasses
import os

from pixart_jax.pipelines.request import BIN_TABLES, GenerationRequest
from pixart_jax.samplers.registry import SamplerName

# samplers distilled for a few steps without guidance: their defaults
FEW_STEP_SAMPLERS = (SamplerName.lcm, SamplerName.tcd, SamplerName.pcm)
REQUEST_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """`sizes`: the (width, height) buckets, the native square first; `samplers`: the SamplerNames the backend
    serves, `sampler` the model's own; `control_modes`: ControlKinds the ControlNet serves (empty without one);
    `loras`: {adapter name: default scale}; `cfg` and `vae_scale`: the transformer config and the VAE factor
    requests are sized with; `max_steps`: the server's limit, which caps the default step count."""
    name: str
    backend: str
    sizes: tuple[tuple[int, int], ...]
    samplers: tuple[str, ...]
    sampler: str
    control_modes: tuple[str, ...]
    loras: dict
    cfg: object
    vae_scale: int
    max_steps: int

    @property
    def defaults(self) -> dict:
        few = self.sampler in FEW_STEP_SAMPLERS
        width, height = self.sizes[0]
        steps = 4 if few else REQUEST_DEFAULTS["num_inference_steps"]
        return {"size": f"{width}x{height}", "num_inference_steps": min(steps, self.max_steps),
                "guidance_scale": 0.0 if few else REQUEST_DEFAULTS["guidance_scale"],
                "scheduler": self.sampler}

    @property
    def controlnet(self) -> bool:
        return bool(self.control_modes)


def bucket_sizes(cfg, vae_scale) -> tuple[tuple[int, int], ...]:
    """(width, height) of every aspect-ratio bucket at the transformer's native resolution (what resolution
    binning bins to), the native square first; only that square for a sample size without a bucket table."""
    native = cfg.sample_size * vae_scale
    table = BIN_TABLES.get(cfg.sample_size, {})
    sizes = [(native, native)] + [(w, h) for h, w in table.values() if (w, h) != (native, native)]
    return tuple(dict.fromkeys(sizes))


def model_name(directory) -> str:
    return os.path.basename(os.path.normpath(directory))


def adapter_name(path, taken) -> str:
    """A LoRA adapter's name from its file or folder name, made unique among `taken` names."""
    base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "lora"
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
