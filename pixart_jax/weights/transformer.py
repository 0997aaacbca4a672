"""Loading and saving PixArt transformer weights in every supported layout.

Formats: a diffusers `transformer/` directory (config.json + safetensors, single or sharded), an original PixArt
`.pth` (or original-layout `.safetensors`) state dict, and our own directory (config.json + an Orbax checkpoint).
Every writer produces its output in a temporary location and moves it into place only when complete.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from pixart_jax.choices import AttentionKernel, RematPolicy
from pixart_jax.files import atomic_directory, check_destination, read_json
from pixart_jax.models.transformer import PixArtTransformer, null_caption_init
from pixart_jax.models.transformer_config import PIPELINE_TOKENS, PixArtConfig, preset
from pixart_jax.weights import WeightsError, export_weights, import_weights, save_pth, save_safetensors
from pixart_jax.weights.files import read_state_dict, read_weights
from pixart_jax.weights.keymaps import pixart as keys
from pixart_jax.weights.keymaps.controlnet import is_controlnet_config, is_controlnet_state_dict
from pixart_jax.weights.nnx_state import abstract_shapes, build_model, flat_arrays

JAX_FORMAT = "pixart-jax"
DIFFUSERS_CLASSES = ("PixArtTransformer2DModel", "Transformer2DModel")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
CONTROLNET_NOTE = ("PixArt ControlNet-Transformer checkpoint, not a plain PixArt transformer: load it with "
                   "pixart_jax.load_controlnet")


def detect_format(path):
    """'diffusers', 'jax' or 'original' for a path `load_transformer` accepts (a pipeline dir means its
    `transformer/`)."""
    if os.path.isfile(path):
        return "original"
    if not os.path.isdir(path):
        raise WeightsError(f"{path} does not exist")
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        if os.path.exists(os.path.join(path, "model_index.json")):
            return detect_format(os.path.join(path, "transformer"))
        raise WeightsError(f"{path} is not a PixArt checkpoint directory: it has no config.json "
                              "(expected a diffusers transformer/ directory, a pipeline directory with "
                              "model_index.json, or a directory written by pixart-jax)")
    config = read_json(config_path)
    if is_controlnet_config(config):
        raise WeightsError(f"{path} is a {CONTROLNET_NOTE}")
    if config.get("_format") == JAX_FORMAT:
        return "jax"
    if config.get("_class_name") in DIFFUSERS_CLASSES:
        return "diffusers"
    raise WeightsError(f"{config_path} describes a {config.get('_class_name')!r}, not a PixArt transformer")


def _build(cfg, arrays, dtype, where, options):
    return build_model(lambda: PixArtTransformer(cfg, dtype, **options, rngs=nnx.Rngs(0)), arrays, where)


def _import(rules, cfg, state_dict, where, ignore=(), only=""):
    expected = abstract_shapes(lambda: PixArtTransformer(cfg, rngs=nnx.Rngs(0)))
    expected = {k: v for k, v in expected.items() if k.startswith(only)}
    rules = [r for r in rules if r.ours.startswith(only)]
    return import_weights(rules, state_dict, expected, where=where, ignore=ignore)


def _diffusers_folder(path):
    """A diffusers transformer folder, or a pipeline folder's transformer/."""
    return os.path.join(path, "transformer") if os.path.exists(os.path.join(path, "model_index.json")) else path


def _pipeline_tokens(folder):
    """The caption length of the pipeline a diffusers transformer/ folder belongs to (PixArtSigmaPipeline: 300), or
    None outside a pipeline folder."""
    index_path = os.path.join(os.path.dirname(os.path.abspath(folder)), "model_index.json")
    return PIPELINE_TOKENS.get(read_json(index_path).get("_class_name")) if os.path.isfile(index_path) else None


def transformer_config(path: str, config: PixArtConfig | str | None = None) -> PixArtConfig:
    """The PixArtConfig of a transformer in any layout `load_transformer` reads, without reading its weights.
    `config` (original files only): a PixArtConfig or a variant name; by default read from the file name."""
    fmt = detect_format(path)
    if fmt == "diffusers":
        folder = _diffusers_folder(path)
        return PixArtConfig.from_diffusers(read_json(os.path.join(folder, "config.json")), _pipeline_tokens(folder))
    if fmt == "jax":
        return PixArtConfig.from_dict(read_json(os.path.join(path, "config.json"))["config"])
    return config if isinstance(config, PixArtConfig) else preset(config or os.path.basename(path))


def load_diffusers(directory: str, dtype=jnp.float32, **options) -> PixArtTransformer:
    """A diffusers `PixArtTransformer2DModel` directory. The null caption `y_embedding`, which diffusers does not
    store, keeps its initial value (it only matters for training with caption dropout). `options`: as for
    load_transformer."""
    directory = _diffusers_folder(directory)
    cfg = transformer_config(directory)
    arrays = _import(keys.DIFFUSERS, cfg, read_weights(directory, DIFFUSERS_WEIGHTS), directory)
    arrays["y_embedding"] = default_null_caption(cfg)
    return _build(cfg, arrays, dtype, directory, options)


def default_null_caption(cfg: PixArtConfig) -> np.ndarray:
    """The y_embedding given to a model whose checkpoint has none (diffusers drops it): the reference init drawn
    from jax.random.key(0) on the CPU, (max_tokens, caption_channels) float32."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return np.asarray(null_caption_init(jax.random.key(0), cfg))


def load_original(path: str, config: PixArtConfig | str | None = None, dtype=jnp.float32,
                  **options) -> PixArtTransformer:
    """An original PixArt state dict (`.pth`, or `.safetensors` with the same keys). `config`: a PixArtConfig or a
    variant name; by default the variant is read from the file name (e.g. `PixArt-XL-2-1024-MS.pth`). `options`:
    as for load_transformer."""
    state_dict = read_state_dict(path)
    if is_controlnet_state_dict(state_dict):
        raise WeightsError(f"{path} is a {CONTROLNET_NOTE} (its keys are base_model.* and controlnet.*)")
    cfg = transformer_config(path, config)
    arrays = _import(keys.ORIGINAL, cfg, state_dict, path, ignore=keys.ORIGINAL_IGNORED)
    return _build(cfg, arrays, dtype, path, options)


def restore_params(directory, shapes):
    """{path: array} of the Orbax checkpoint `directory/params` written by `write_params`, onto `shapes`."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=device) for k, s in shapes.items()}
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(os.path.join(directory, "params")), target)


def write_params(model, dst, meta, *, overwrite=False, keep=()):
    """Our directory format: config.json = `meta` and an Orbax checkpoint of every variable under params/. An
    existing `dst` is replaced only if we wrote it, or with `overwrite`, and never if it overlaps a path in `keep`."""
    arrays = flat_arrays(model)
    with atomic_directory(dst, overwrite=overwrite, keep=keep) as tmp:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(tmp, "params"), arrays)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(meta, f, indent=2)


def load_jax(directory: str, dtype=jnp.float32, **options) -> PixArtTransformer:
    """A directory written by `save_jax`: our config.json and an Orbax checkpoint of the flat parameters.
    `options`: as for load_transformer."""
    cfg = transformer_config(directory)
    arrays = restore_params(directory, abstract_shapes(lambda: PixArtTransformer(cfg, rngs=nnx.Rngs(0))))
    return _build(cfg, arrays, dtype, directory, options)


def load_transformer(path: str, dtype=jnp.float32, config: PixArtConfig | str | None = None, *,
                     remat: RematPolicy = RematPolicy.none, activation_dtype=jnp.float32,
                     attention_kernel: AttentionKernel = AttentionKernel.auto) -> PixArtTransformer:
    """Loads a PixArt transformer from any supported layout, detected from `path` (see module docstring).

    dtype: the compute dtype (parameters stay fp32). config: only for original `.pth` files, a PixArtConfig or a
    variant name such as "PixArt-XL-2-1024-MS" when the file name does not say which. remat, activation_dtype,
    attention_kernel: how the model runs (PixArtTransformer's options; the checkpoint does not store them).
    """
    options = dict(remat=remat, activation_dtype=activation_dtype, attention_kernel=attention_kernel)
    fmt = detect_format(path)
    if fmt == "diffusers":
        return load_diffusers(path, dtype, **options)
    if fmt == "jax":
        return load_jax(path, dtype, **options)
    return load_original(path, config, dtype, **options)


def _numpy_params(model):
    return {k: np.asarray(v) for k, v in flat_arrays(model).items()}


def diffusers_layout(path: str, config: PixArtConfig | str | None = None):
    """(cfg, tensors, y_embedding) of a transformer in any layout `load_transformer` reads, in diffusers' layout:
    {diffusers key: array} (read lazily from a diffusers folder, converted through our key maps otherwise) and the
    checkpoint's null caption, or None when it has none (diffusers folders). The caller checks keys and shapes
    (a diffusers folder is not read here)."""
    if detect_format(path) == "diffusers":
        return transformer_config(path), read_weights(_diffusers_folder(path), DIFFUSERS_WEIGHTS, lazy=True), None
    if detect_format(path) == "original":
        cfg = transformer_config(path, config)
        return cfg, *original_to_diffusers(read_state_dict(path), cfg, path)
    model = load_jax(path)
    params = _numpy_params(model)
    return model.cfg, export_weights(keys.DIFFUSERS, params), params["y_embedding"]


def original_to_diffusers(state_dict, cfg: PixArtConfig, where="checkpoint", only=""):
    """(tensors, y_embedding): an original-layout state dict ({key: array}, `pos_embed` ignored) in diffusers'
    layout, through our key maps (names and shapes checked). `only`: a prefix of our parameter paths to convert
    just those (e.g. "blocks." for a stack of blocks; y_embedding is then None)."""
    arrays = _import(keys.ORIGINAL, cfg, state_dict, where, ignore=keys.ORIGINAL_IGNORED, only=only)
    return export_weights(keys.DIFFUSERS, arrays), arrays.get("y_embedding")


def save_diffusers(model: PixArtTransformer, dst: str, *, overwrite: bool = False, keep=()) -> None:
    """Writes a diffusers `transformer/` directory (config.json + diffusion_pytorch_model.safetensors). An existing
    `dst` is replaced only if we wrote it, or with `overwrite`, and never if it overlaps a path in `keep`."""
    config = model.cfg.to_diffusers()
    config["_diffusers_version"] = "0.42.1"
    tensors = export_weights(keys.DIFFUSERS, _numpy_params(model))
    with atomic_directory(dst, overwrite=overwrite, keep=keep) as tmp:
        save_safetensors(tensors, os.path.join(tmp, DIFFUSERS_WEIGHTS), {"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def original_state_dict(model: PixArtTransformer) -> dict[str, np.ndarray]:
    """Our parameters in the original repo's key layout, `y_embedding` included ({key: np.ndarray})."""
    return export_weights(keys.ORIGINAL, _numpy_params(model))


def save_original(model: PixArtTransformer, path: str, *, overwrite: bool = False, keep=()) -> None:
    """Writes the original-layout state dict: `.safetensors` by extension, otherwise a `.pth` that `torch.load`
    reads ({"state_dict": ...}, as the reference loaders expect; written without torch). An existing file is
    replaced only with `overwrite`, and never one of `keep`."""
    check_destination(path, directory=False, overwrite=overwrite, keep=keep)
    tensors = original_state_dict(model)
    if path.endswith(".safetensors"):
        save_safetensors(tensors, path)
    else:
        save_pth({"state_dict": tensors}, path)


def save_jax(model: PixArtTransformer, dst: str, *, overwrite: bool = False, keep=()) -> None:
    """Writes our format: config.json (with `_format: pixart-jax`) and an Orbax checkpoint under params/. An
    existing `dst` is replaced as by `save_diffusers`."""
    write_params(model, dst, {"_format": JAX_FORMAT, "config": model.cfg.to_dict()}, overwrite=overwrite, keep=keep)
