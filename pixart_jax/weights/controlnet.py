"""Loading and saving PixArt ControlNet-Transformers (spec §4.5) in every supported layout.

Formats: an original `.pth` (or `.safetensors`) state dict of the wrapper (`base_model.*` + `controlnet.*`); a
directory holding such a `controlnet.pth` and a config.json of the official constructor arguments (`depth`,
`hidden_size`, `num_heads`, `input_size`, `patch_size`, `caption_channels`, `model_max_length`, `copy_blocks_num`,
`lewei_scale`, `multi_scale`, `class`); our directory (config.json + an Orbax checkpoint). A new ControlNet starts
from any base checkpoint `load_transformer` reads: `load_controlnet(base=PATH, copies=13)`.
"""
import json
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.choices import AttentionKernel, RematPolicy
from pixart_jax.files import atomic_directory, check_destination, read_json
from pixart_jax.models.controlnet import (
    PRESETS_CONTROLNET,
    RELEASED_COPIES,
    ControlNetConfig,
    PixArtControlNet,
    native_pos_table,
)
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS, PixArtConfig, preset
from pixart_jax.weights import WeightsError, export_weights, import_weights, save_pth, save_safetensors
from pixart_jax.weights.files import read_state_dict
from pixart_jax.weights.keymaps import controlnet as keys
from pixart_jax.weights.nnx_state import abstract_shapes, build_model, flat_arrays
from pixart_jax.weights.transformer import load_transformer, restore_params, write_params

OFFICIAL_WEIGHTS = "controlnet.pth"
PLAIN_NOTE = ("a plain PixArt transformer checkpoint, not a ControlNet-Transformer (no base_model.* / controlnet.* "
              "keys): load it with pixart_jax.load_transformer, or start a ControlNet from it with "
              "pixart_jax.load_controlnet(base=..., copies=N)")
# The official constructors' defaults (PixArt / PixArtMS / ControlPixArtHalf) for arguments a config.json omits.
OFFICIAL_DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                         mlp_ratio=4.0, pred_sigma=True, caption_channels=4096, lewei_scale=1.0, model_max_length=120,
                         copy_blocks_num=RELEASED_COPIES)
# Constructor arguments that change nothing here at these values (the released models' settings); caption dropout
# is a training setting (model.caption_dropout), so any value is accepted.
INERT_ARGUMENTS = {"drop_path": (0, 0.0), "window_size": (0,), "window_block_indexes": (None, []),
                   "use_rel_pos": (False,)}
_NAME_PATTERNS = [(r"1024-ControlNet", "PixArt-XL-2-1024-ControlNet"),
                  (r"512-ControlNet", "PixArt-XL-2-512-ControlNet")]


def config_from_official(args, where="config.json"):
    """ControlNetConfig of the official constructor arguments (a directory's config.json)."""
    args = {k: v for k, v in args.items() if k != "class_dropout_prob"}
    unsupported = [f"{k}={args.pop(k)!r}" for k, allowed in INERT_ARGUMENTS.items() if args.get(k, allowed[0])
                   not in allowed]
    unknown = sorted(set(args) - set(OFFICIAL_DEFAULTS) - set(INERT_ARGUMENTS) - {"multi_scale", "class"})
    if unknown or unsupported:
        raise WeightsError(f"{where}: unknown ControlNet constructor arguments {unknown}" if unknown else
                              f"{where}: unsupported constructor arguments {unsupported} (the released models use "
                              f"{ {k: v[0] for k, v in INERT_ARGUMENTS.items()} })")
    class_name = args.get("class")
    if class_name is not None and class_name not in keys.OFFICIAL_CLASSES:
        raise WeightsError(f"{where}: class {class_name!r} is not one of {sorted(keys.OFFICIAL_CLASSES)}")
    multi_scale = bool(args.get("multi_scale", keys.OFFICIAL_CLASSES.get(class_name, False)))
    if class_name is not None and keys.OFFICIAL_CLASSES[class_name] != multi_scale:
        raise WeightsError(f"{where}: class {class_name} does not go with multi_scale={multi_scale}")
    a = dict(OFFICIAL_DEFAULTS, **{k: v for k, v in args.items() if k not in INERT_ARGUMENTS})
    base = PixArtConfig(depth=a["depth"], hidden_size=a["hidden_size"], num_heads=a["num_heads"],
                        patch_size=a["patch_size"], in_channels=a["in_channels"],
                        out_channels=a["in_channels"] * (2 if a["pred_sigma"] else 1), mlp_ratio=float(a["mlp_ratio"]),
                        caption_channels=a["caption_channels"], max_tokens=a["model_max_length"],
                        sample_size=a["input_size"], interpolation_scale=float(a["lewei_scale"]),
                        micro_conditions=multi_scale)
    try:
        return ControlNetConfig(base, a["copy_blocks_num"])
    except ValueError as e:
        raise WeightsError(f"{where}: {e}") from None


def config_to_official(cfg: ControlNetConfig):
    """The official constructor arguments of `cfg` (inverse of config_from_official)."""
    b = cfg.base
    return {"depth": b.depth, "hidden_size": b.hidden_size, "num_heads": b.num_heads, "input_size": b.sample_size,
            "patch_size": b.patch_size, "in_channels": b.in_channels, "mlp_ratio": b.mlp_ratio,
            "pred_sigma": b.out_channels == 2 * b.in_channels, "caption_channels": b.caption_channels,
            "model_max_length": b.max_tokens, "copy_blocks_num": cfg.copies, "lewei_scale": b.interpolation_scale,
            "multi_scale": b.micro_conditions,
            "class": next(c for c, ms in keys.OFFICIAL_CLASSES.items() if ms == b.micro_conditions)}


def detect_format(path):
    """'original' (a state dict file), 'official' (controlnet.pth + constructor config.json) or 'jax' (ours)."""
    if os.path.isfile(path):
        return "original"
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise WeightsError(f"{path} is not a ControlNet checkpoint directory: it has no config.json"
                              if os.path.isdir(path) else f"{path} does not exist")
    config = read_json(config_path)
    if not keys.is_controlnet_config(config):
        raise WeightsError(f"{path} holds {PLAIN_NOTE}")
    return "jax" if config.get("_format") == keys.JAX_FORMAT else "official"


def _copies_in(state_dict):
    prefix = re.compile(re.escape(keys.BRANCH_PREFIX) + r"(\d+)\.copied_block\.")
    return len({m[1] for m in map(prefix.match, state_dict) if m})


def _base_for(path, config):
    """The base PixArtConfig of an original state-dict file: from `config` (a ControlNetConfig, a PixArtConfig or a
    preset name) or the file name."""
    if isinstance(config, ControlNetConfig):
        return config.base
    if isinstance(config, PixArtConfig):
        return config
    name = config or os.path.basename(path)
    matched = next((n for pattern, n in _NAME_PATTERNS if re.search(pattern, name)), name)
    if matched in PRESETS_CONTROLNET:
        return PRESETS_CONTROLNET[matched].base
    try:
        return preset(name)
    except ValueError:
        raise WeightsError(f"cannot tell the ControlNet variant from {name!r}: pass config= one of "
                              f"{sorted(PRESETS_CONTROLNET) + sorted(PRESETS)}, a PixArtConfig or a "
                              "ControlNetConfig") from None


def _config_for(path, config, state_dict):
    """The ControlNetConfig of an original state dict: `config` as given (a ControlNetConfig), or the base
    architecture (see _base_for) with the copies it holds."""
    if isinstance(config, ControlNetConfig):
        return config
    try:
        return ControlNetConfig(_base_for(path, config), _copies_in(state_dict))
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def _official_config(directory):
    config_path = os.path.join(directory, "config.json")
    return config_from_official(read_json(config_path), config_path)


def _jax_config(directory):
    return ControlNetConfig.from_dict(read_json(os.path.join(directory, "config.json"))["config"])


def base_config(path: str, config=None) -> PixArtConfig:
    """The base transformer's PixArtConfig of a ControlNet checkpoint in any layout, read without its weights
    (`config` as for load_controlnet)."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "original":
        return _base_for(path, config)
    if fmt == "official":
        return _official_config(path).base
    return _jax_config(path).base


def original_layout(path: str, config=None):
    """(ControlNetConfig, {key: array} in the original wrapper's layout, where) of a ControlNet checkpoint in any
    layout (`config` as for load_controlnet; our directory format converted through the key map)."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "jax":
        model = load_controlnet(path)
        return model.config, original_state_dict(model), path
    if fmt == "official":
        where = os.path.join(path, OFFICIAL_WEIGHTS)
        return _official_config(path), read_state_dict(where), where
    state_dict = read_state_dict(path)
    if not keys.is_controlnet_state_dict(state_dict):
        raise WeightsError(f"{path} is {PLAIN_NOTE}")
    return _config_for(path, config, state_dict), state_dict, path


def _make(cfg, dtype=jnp.float32, **options):
    return lambda: PixArtControlNet(PixArtTransformer(cfg.base, dtype, **options, rngs=nnx.Rngs(0)), cfg.copies)


def from_state_dict(state_dict, cfg: ControlNetConfig, dtype=jnp.float32, where="checkpoint", **options):
    """A PixArtControlNet from an original-layout state dict {key: array}; `options` as for load_controlnet."""
    if not keys.is_controlnet_state_dict(state_dict):
        raise WeightsError(f"{where} is {PLAIN_NOTE}")
    if cfg.stored_pos_table:
        ignore = [k for k in state_dict if k.startswith(keys.FIXED_SIZE_IGNORED_PREFIXES)]
    else:
        ignore = keys.MS_IGNORED
    arrays = import_weights(keys.ORIGINAL_CONTROLNET, state_dict, abstract_shapes(_make(cfg)), where=where,
                            ignore=ignore)
    return build_model(_make(cfg, dtype, **options), arrays, where)


def load_controlnet(path: str | None = None, config=None, dtype=jnp.float32, *, base=None,
                    copies: int = RELEASED_COPIES, remat: RematPolicy = RematPolicy.none,
                    activation_dtype=jnp.float32,
                    attention_kernel: AttentionKernel = AttentionKernel.auto) -> PixArtControlNet:
    """A PixArt ControlNet-Transformer from `path` (any layout of the module docstring, detected), or a new one
    from `base` (a PixArtTransformer, or a path load_transformer reads) with `copies` copied blocks, which
    computes exactly what the base does until trained.

    config: for original state-dict files, a ControlNetConfig, or the base architecture (a PixArtConfig or a preset
    name such as "PixArt-XL-2-512-ControlNet" / "PixArt-XL-2-1024-MS") with the copies the file holds; by default
    read from the file name (e.g. `PixArt-XL-2-1024-ControlNet.pth`). dtype: the compute dtype (parameters fp32).
    remat, activation_dtype, attention_kernel: how the base runs (PixArtTransformer's options) when it is loaded
    here; a base passed as a model keeps its own.
    """
    if (path is None) == (base is None):
        raise ValueError("pass either a ControlNet checkpoint path or base= (a PixArt transformer), not both")
    options = dict(remat=remat, activation_dtype=activation_dtype, attention_kernel=attention_kernel)
    if base is not None:
        base = load_transformer(base, dtype, **options) if isinstance(base, (str, os.PathLike)) else base
        return PixArtControlNet(base, copies)
    path = os.fspath(path)
    if detect_format(path) == "jax":
        cfg = _jax_config(path)
        return build_model(_make(cfg, dtype, **options), restore_params(path, abstract_shapes(_make(cfg))), path)
    cfg, state_dict, where = original_layout(path, config)
    return from_state_dict(state_dict, cfg, dtype, where, **options)


def original_state_dict(model: PixArtControlNet):
    """The wrapper's state dict in the original layout ({key: np.ndarray}), `base_model.pos_embed` included (the
    multi-scale class stores the native table the reference would, though nothing reads it)."""
    tensors = export_weights(keys.ORIGINAL_CONTROLNET, {k: np.asarray(v) for k, v in flat_arrays(model).items()})
    tensors.setdefault(keys.BASE_PREFIX + "pos_embed", native_pos_table(model.cfg))
    return tensors


def save_controlnet(model: PixArtControlNet, path: str, *, overwrite: bool = False, keep=()):
    """Writes the original layout: a `.pth` ({"state_dict": ...}, what torch.load and the reference loaders read;
    written without torch) or `.safetensors` file by extension; any other path becomes a directory with
    controlnet.pth and the official constructor arguments in config.json (the directory format that needs no
    config= to load). An existing file or folder is replaced only as `check_destination` allows."""
    tensors = original_state_dict(model)
    if path.endswith((".safetensors", ".pth")):
        check_destination(path, directory=False, overwrite=overwrite, keep=keep)
    if path.endswith(".safetensors"):
        save_safetensors(tensors, path)
    elif path.endswith(".pth"):
        save_pth({"state_dict": tensors}, path)
    else:
        with atomic_directory(path, overwrite=overwrite, keep=keep) as tmp:
            save_pth({"state_dict": tensors}, os.path.join(tmp, OFFICIAL_WEIGHTS))
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(config_to_official(model.config), f, indent=1)


def save_controlnet_jax(model: PixArtControlNet, dst: str, *, overwrite: bool = False, keep=()):
    """Writes our format: config.json (`_format: pixart-jax-controlnet`) and an Orbax checkpoint under params/. An
    existing `dst` is replaced only as `check_destination` allows."""
    write_params(model, dst, {"_format": keys.JAX_FORMAT, "config": model.config.to_dict()}, overwrite=overwrite,
                 keep=keep)
