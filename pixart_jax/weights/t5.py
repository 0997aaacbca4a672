"""Reading a Hugging Face `text_encoder/` folder (T5 v1.1 `config.json` + safetensors or `.bin` weights) into our
T5 encoder (pixart_jax.models.t5), one block at a time, optionally as int8."""
import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.models.int8 import quantize_linears
from pixart_jax.models.t5 import ACTIVATIONS, T5Config, T5Encoder, check_compute_dtype
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.files import read_model_config, read_weights
from pixart_jax.weights.keymaps.t5 import (
    DECODER_PREFIXES,
    ENCODER_EMBED,
    GLOBAL,
    INT8_CONFIG_KEY,
    INT8_FORMAT,
    INT8_SCALE,
    SHARED_EMBED,
    block_rules,
)
from pixart_jax.weights.mapping import Rule, import_weights, leaf_rules
from pixart_jax.weights.nnx_state import abstract_shapes, build_model
from pixart_jax.weights.safetensors_io import select, tensor_spec


def read_t5_config(directory) -> T5Config:
    """Reads `directory/config.json`; a WeightsError says why a folder is not a T5 encoder."""
    path, raw = read_model_config(directory, "T5 text encoder", "text_encoder")
    if raw.get("model_type") != "t5":
        raise WeightsError(f"{path} describes a {raw.get('model_type') or raw.get('_class_name')!r} model, "
                              "not a T5 text encoder (model_type 't5')")
    fields = {f.name for f in dataclasses.fields(T5Config)}
    config = T5Config(**{k: v for k, v in raw.items() if k in fields})
    parts = config.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or config.activation_name not in ACTIVATIONS:
        raise WeightsError(f"{path}: unsupported feed_forward_proj {config.feed_forward_proj!r}")
    return config


def is_int8_checkpoint(directory):
    """Whether `directory` holds an int8 T5 written by `pixart_jax.weights.t5_int8.export_int8_t5`."""
    _, raw = read_model_config(directory, "T5 text encoder", "text_encoder")
    return raw.get(INT8_CONFIG_KEY) == INT8_FORMAT


def _global_rules(source):
    """GLOBAL, with the embedding read from the encoder's copy when the checkpoint lacks `shared.weight`."""
    if SHARED_EMBED in source or ENCODER_EMBED not in source:
        return GLOBAL
    return [Rule(r.ours, ENCODER_EMBED, r.kind) if r.source == SHARED_EMBED else r for r in GLOBAL]


class EncoderCheckpoint(NamedTuple):
    """A T5 encoder checkpoint read in our layout (pixart_jax.weights.keymaps.t5): its config, `specs` {our path:
    (dtype, shape)} of every array the parts hold, in the parts' order, and `parts`, an iterator of {our path: array}
    read when iterated."""
    cfg: T5Config
    specs: dict
    parts: Iterator[dict]


def encoder_parts(directory, int8=False):
    """The encoder's arrays one block per part, then the global tensors, in the checkpoint's dtypes (see
    EncoderCheckpoint). With `int8` every linear comes as an int8 `kernel` plus its float32 `scale`: quantised
    here (pixart_jax.models.int8.quantize_kernel) from a float checkpoint, or read as stored from an int8 one. The host
    holds one block at a time, not the 19 GB of an fp32 T5-XXL; unknown keys are reported with the last part.
    """
    cfg = read_t5_config(directory)
    quantized = is_int8_checkpoint(directory)
    if quantized and not int8:
        raise WeightsError(f"{directory} holds an int8 T5 (every linear as int8 codes and scales): load it "
                              "with int8=True")
    source = read_weights(directory, "model.safetensors", "pytorch_model.bin", lazy=True)
    global_rules = _global_rules(source)
    expected = abstract_shapes(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)))
    ignore = [k for k in source if k == ENCODER_EMBED or k.startswith(DECODER_PREFIXES)]
    global_keys = {key for rule in global_rules for key in rule.sources}
    specs = {}
    for ours, (key, *_), tag in leaf_rules([r for i in range(cfg.num_layers) for r in block_rules(i)] + global_rules):
        if ours in expected and key in source:
            shape = expected[ours]
            specs[ours] = (np.dtype(np.int8) if int8 and tag == "matrix" else tensor_spec(source, key)[0], shape)
            if int8 and tag == "matrix":
                specs[ours.removesuffix("kernel") + "scale"] = (np.dtype(np.float32), shape[-1:])

    def part(rules, keys, prefix):
        linears = [r for r in rules if r.kind == "linear_nobias" and f"{r.ours}.kernel" in expected]
        scales = {}
        if quantized:
            scales = {f"{r.ours}.scale": f"{r.source}.{INT8_SCALE}" for r in linears}
            keys = [k for k in keys if k not in scales.values()]
        shapes = {k: v for k, v in expected.items() if k.startswith(prefix)}
        arrays = import_weights(rules, select(source, keys), shapes, where=directory, ignore=ignore)
        if int8 and not quantized:
            return quantize_linears(arrays, [r.ours for r in linears])
        return {**arrays, **{ours: source[key] for ours, key in scales.items()}}

    def parts():
        claimed = set()
        for i in range(cfg.num_layers):
            keys = [k for k in source if k.startswith(f"encoder.block.{i}.") and k not in global_keys]
            claimed.update(keys)
            yield part(block_rules(i), keys, f"blocks.{i}.")
        yield part(global_rules, [k for k in source if k not in claimed], "")

    return EncoderCheckpoint(cfg, specs, parts())


def _variable_dtypes(make_model):
    _, state = nnx.split(nnx.eval_shape(make_model))
    return {".".join(map(str, path)): var.get_value().dtype for path, var in nnx.to_flat_state(state)}


def load_text_encoder(directory: str, dtype=jnp.float32, int8: bool = False) -> T5Encoder:
    """The T5 encoder of a Hugging Face folder (`config.json` + weights), as a callable NNX module.

    `model(input_ids, attention_mask) -> last_hidden_state`. Weights are stored in `dtype` (float32 or
    bfloat16), or as int8 with per-channel scales for the linears when `int8` is set (quantised while loading, or
    read from an int8 T5 written by `pixart_jax.weights.t5_int8.export_int8_t5`). Torch is not needed.
    """
    dtype = check_compute_dtype(dtype)
    cfg, _, parts = encoder_parts(directory, int8)
    make = lambda: T5Encoder(cfg, dtype, dtype, int8=int8, rngs=nnx.Rngs(0))  # noqa: E731
    dtypes = _variable_dtypes(make)
    arrays = {}
    for part in parts:  # each block cast to its stored dtype before the next is read
        arrays.update({key: np.asarray(value, dtypes[key]) for key, value in part.items()})
    return build_model(make, arrays, where=directory)
