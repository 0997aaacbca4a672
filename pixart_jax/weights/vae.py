"""Reading a diffusers `vae/` folder (AutoencoderKL `config.json` + safetensors) into our VAE
(pixart_jax.models.vae)."""
import dataclasses

import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.files import read_model_config, read_weights
from pixart_jax.weights.keymaps.vae import LEGACY_MARKER, vae_rules
from pixart_jax.weights.mapping import import_weights
from pixart_jax.weights.nnx_state import abstract_shapes, build_model


def read_vae_config(directory) -> VAEConfig:
    """Reads `directory/config.json`; a WeightsError says why a folder is not a supported VAE."""
    path, raw = read_model_config(directory, "VAE", "vae")
    if raw.get("_class_name") != "AutoencoderKL":
        raise WeightsError(f"{path} describes a {raw.get('_class_name') or raw.get('model_type')!r} model, "
                              "not a diffusers AutoencoderKL")
    if raw.get("act_fn", "silu") != "silu":
        raise WeightsError(f"{path}: unsupported act_fn {raw['act_fn']!r} (this VAE supports 'silu')")
    levels = len(raw.get("block_out_channels", VAEConfig.block_out_channels))
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(raw.get(key, [block] * levels)) != [block] * levels:
            raise WeightsError(f"{path}: unsupported {key} {raw[key]!r} (expected {levels} x {block!r})")
    fields = {f.name for f in dataclasses.fields(VAEConfig)}
    values = {k: v for k, v in raw.items() if k in fields}
    values["block_out_channels"] = tuple(values.get("block_out_channels", VAEConfig.block_out_channels))
    return VAEConfig(**values)


def load_vae(directory: str, dtype=jnp.float32) -> AutoencoderKL:
    """The AutoencoderKL of a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`)."""
    cfg = read_vae_config(directory)
    source = read_weights(directory, "diffusion_pytorch_model.safetensors")
    legacy = any(key.endswith(LEGACY_MARKER) for key in source)
    rules = vae_rules(len(cfg.block_out_channels), cfg.layers_per_block, legacy_attention=legacy)
    make = lambda: AutoencoderKL(cfg, dtype, rngs=nnx.Rngs(0))  # noqa: E731
    arrays = import_weights(rules, source, abstract_shapes(make), where=directory)
    return build_model(make, arrays, where=directory)
