"""diffusers' LoRA methods on a pipeline (`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`,
`unload_lora_weights`, `get_active_adapters`), one implementation for the JAX pipelines and the PyTorch one: each
is a call of its backend's LoRA functions on the pipeline's adapted model (the transformer; a ControlNet's base).

A backend is anything with load_lora(model, path, scale, adapter_name), set_adapters(model, names, weights),
active_adapters(model) -> {name: weight}, fuse_lora(model), unfuse_lora(model) and unload_lora(model): JAX_LORA
(the LoRA core, pixart_jax/models/lora.py and weights/lora.py) or pixart_jax.torch.lora's TORCH_LORA (PEFT)."""
import math
import os
import types

from pixart_jax.models import lora
from pixart_jax.weights.lora import load_lora

JAX_LORA = types.SimpleNamespace(load_lora=load_lora, set_adapters=lora.set_adapters,
                                 active_adapters=lora.active_adapters, fuse_lora=lora.fuse_lora,
                                 unfuse_lora=lora.unfuse_lora, unload_lora=lora.unload_lora)


def lora_adapters(adapters) -> list[tuple[str, float]]:
    """[(path, scale)] of a pipeline's `lora=` argument: None, a path, or a list of paths and (path, scale) pairs
    (scale 1 for a bare path); a ValueError names a path that does not exist or a scale that is not a finite
    number, so that nothing loads for a bad one."""
    if adapters is None:
        return []
    checked = []
    for item in [adapters] if isinstance(adapters, (str, os.PathLike)) else adapters:
        path, scale = (item, 1.0) if isinstance(item, (str, os.PathLike)) else item
        if not os.path.exists(path):
            raise ValueError(f"lora: {path} does not exist")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"lora: the scale of {path} must be a finite number, got {scale!r}")
        checked.append((os.fspath(path), float(scale)))
    return checked


class LoRAMethods:
    """The methods, over `lora_backend` and the `lora_model` property (which a pipeline class defines)."""

    lora_backend = JAX_LORA
    _weights_before_fuse = None  # {name: weight} while fuse_lora(lora_scale) holds them scaled

    @property
    def lora_model(self):
        """The model the adapters go on: the transformer."""
        return self.transformer

    def load_lora_weights(self, path, adapter_name=None, scale=1.0):
        """Adds the LoRA adapter at `path` (a PEFT folder, pytorch_lora_weights.safetensors, a kohya / OneTrainer
        file; diffusers' or the original module names) as `adapter_name` (default "default_N"), active with weight
        `scale` beside the adapters already active."""
        self.lora_backend.load_lora(self.lora_model, path, scale, adapter_name)

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Makes `adapter_names` (a name or a list) the active adapters with `adapter_weights` (a number for all, a
        list, or None: 1.0); [] turns every adapter off."""
        self.lora_backend.set_adapters(self.lora_model, adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        """The names of the active adapters."""
        return list(self.lora_backend.active_adapters(self.lora_model))

    def fuse_lora(self, lora_scale=1.0):
        """Merges the active adapters, at their weights times `lora_scale`, into the transformer's weights (each
        step then costs what the base model's does); unfuse_lora takes them out again."""
        model, backend = self.lora_model, self.lora_backend
        active = backend.active_adapters(model)
        backend.set_adapters(model, list(active), [w * lora_scale for w in active.values()])
        backend.fuse_lora(model)
        self._weights_before_fuse = active

    def unfuse_lora(self):
        """Takes the fused adapters out of the weights; they are active again with the weights they had before
        fuse_lora."""
        model, backend = self.lora_model, self.lora_backend
        backend.unfuse_lora(model)
        if self._weights_before_fuse is not None:
            backend.set_adapters(model, list(self._weights_before_fuse), list(self._weights_before_fuse.values()))
            self._weights_before_fuse = None

    def unload_lora_weights(self):
        """Removes every adapter (fused ones are taken out first): the base model again."""
        self.lora_backend.unload_lora(self.lora_model)
        self._weights_before_fuse = None
