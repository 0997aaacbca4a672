"""LoRA adapter files on disk, format detected: PEFT folders (adapter_config.json + adapter_model.safetensors or
.bin), the PixArt scripts' and diffusers' single files (pytorch_lora_weights.safetensors), kohya / OneTrainer files
(lora_transformer_<path with _>.lora_down / lora_up / alpha); and the PEFT folder we write. Tensors stay in PyTorch's
layout here; pixart_jax/weights/lora.py maps them onto the model."""
import dataclasses
import json
import os
import re
import warnings

import numpy as np

from pixart_jax.files import atomic_directory, read_json
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.files import read_state_dict
from pixart_jax.weights.keymaps import lora as keys
from pixart_jax.weights.safetensors_io import save_safetensors


@dataclasses.dataclass
class AdapterFile:
    """An adapter as stored: {PyTorch module path: (A (r, in[, kh, kw]), B (out, r[, 1, 1]), alpha)}, whether it
    scales by alpha / √r (rsLoRA), and the file it came from."""
    modules: dict
    rslora: bool
    where: str


def _locate(path):
    """(weights file, PEFT config dict or {}) of an adapter folder or file."""
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise WeightsError(f"{path} does not exist")
        return path, {}
    if os.path.isfile(os.path.join(path, keys.PEFT_CONFIG)):
        for name in keys.PEFT_WEIGHTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name), read_json(os.path.join(path, keys.PEFT_CONFIG))
    if os.path.isfile(os.path.join(path, keys.DIFFUSERS_WEIGHTS)):
        return os.path.join(path, keys.DIFFUSERS_WEIGHTS), {}
    raise WeightsError(f"{path} holds no LoRA adapter: expected {keys.PEFT_CONFIG} with one of "
                       f"{', '.join(keys.PEFT_WEIGHTS)} (a PEFT folder), or {keys.DIFFUSERS_WEIGHTS}")


def _check_config(config, where):
    if config.get("peft_type", "LORA") != "LORA":
        raise WeightsError(f"{where}: a {config['peft_type']} adapter, not LoRA")
    for option in ("use_dora", "lora_bias"):
        if config.get(option):
            raise WeightsError(f"{where}: {option}=true adapters are not supported (plain LoRA only)")


def split_key(key, modules):
    """(PyTorch module path, "A" | "B" | "alpha") of a file key, or None for a key naming no module in `modules`
    (a set of module paths, diffusers' or the original layout's)."""
    for suffix, tensor in keys.SUFFIXES.items():
        if not key.endswith(suffix):
            continue
        stem = key[:-len(suffix)]
        if stem.startswith(keys.KOHYA_PREFIX):
            underscored = {m.replace(".", "_"): m for m in modules}
            module = underscored.get(stem[len(keys.KOHYA_PREFIX):])
            return (module, tensor) if module else None
        for prefix in keys.DOTTED_PREFIXES:
            if stem.startswith(prefix) and stem[len(prefix):] in modules:
                return stem[len(prefix):], tensor
    return None


def _config_alpha(module, config):
    """lora_alpha of `module` from a PEFT config (alpha_pattern first, matched as PEFT does), or None."""
    for pattern, alpha in config.get("alpha_pattern", {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config["lora_alpha"]) if "lora_alpha" in config else None


def _grouped(tensors, modules, where):
    """{module: {"A": .., "B": .., "alpha": ..}} of a file's tensors; a WeightsError names unknown keys."""
    grouped, unknown = {}, []
    for key, value in tensors.items():
        split = split_key(key, modules)
        if split is None:
            unknown.append(key)
        else:
            grouped.setdefault(split[0], {})[split[1]] = np.asarray(value)
    if unknown:
        raise WeightsError(f"{where}: keys that name no LoRA tensor of a module of this model (diffusers' or the "
                           f"original layout): {unknown[:10]}" + (f" and {len(unknown) - 10} more"
                                                                   if len(unknown) > 10 else ""))
    incomplete = sorted(m for m, t in grouped.items() if not {"A", "B"} <= set(t))
    if incomplete:
        raise WeightsError(f"{where}: modules with lora_A or lora_B missing: {incomplete[:10]}")
    return grouped


def read_adapter(path, modules) -> AdapterFile:
    """The adapter at `path` (a PEFT folder, a folder with pytorch_lora_weights.safetensors, or a single
    .safetensors / .bin file in any of the formats), checked against `modules` (the module paths it may adapt).
    Modules without an alpha (neither in the file nor its config) take PEFT's default lora_alpha 8, with one
    warning."""
    file, config = _locate(path)
    _check_config(config, path)
    grouped = _grouped(read_state_dict(file), set(modules), file)
    if not grouped:
        raise WeightsError(f"{file} holds no LoRA tensors")
    adapter, defaulted = {}, []
    for module, t in grouped.items():
        alpha = float(t["alpha"]) if "alpha" in t else _config_alpha(module, config)
        if alpha is None:
            alpha = keys.PEFT_DEFAULT_ALPHA
            defaulted.append(module)
        adapter[module] = (t["A"], t["B"], alpha)
    if defaulted:
        warnings.warn(f"{file}: no lora_alpha for {len(defaulted)} of {len(grouped)} modules; using PEFT's default "
                      f"lora_alpha {keys.PEFT_DEFAULT_ALPHA:g} for them (scale {keys.PEFT_DEFAULT_ALPHA:g} / r)")
    return AdapterFile(adapter, bool(config.get("use_rslora", False)), file)


def write_peft(directory, tensors, config, *, overwrite=False):
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors), written atomically; an existing
    `directory` is replaced only if pixart-jax wrote it, or with `overwrite`."""
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_safetensors(tensors, os.path.join(tmp, keys.PEFT_WEIGHTS[0]), {"format": "pt"})
        with open(os.path.join(tmp, keys.PEFT_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
