"""The int8 T5 checkpoint: a Hugging Face T5 encoder folder whose every linear (`wo` included) is stored as the int8
codes and float32 per-output-channel scales of `pixart_jax.models.int8.quantize_kernel`, written once, so that a GPU
host never reads the float encoder (T5-XXL: 19 GB in float32; 4.6 GB of codes plus the embedding).

Layout: config.json (the source's, marked `pixart_jax_quantization`) and model.safetensors with the Hugging Face
keys; each linear's `weight` holds its codes (out, in) int8 and `weight_scale` its scales (out,). Both runtimes
read it: `pixart_jax.load_text_encoder(DIR, int8=True)` and `pixart_jax.torch` (`int8=True`).
"""
import json
import os

import numpy as np

from pixart_jax.choices import TorchDType, choose
from pixart_jax.files import atomic_directory, read_json
from pixart_jax.weights.keymaps.t5 import INT8_CONFIG_KEY, INT8_FORMAT, INT8_SCALE, t5_rules
from pixart_jax.weights.mapping import leaf_rules
from pixart_jax.weights.safetensors_io import write_safetensors
from pixart_jax.weights.t5 import encoder_parts

WEIGHTS = "model.safetensors"


def hf_names(num_layers):
    """{our path: (Hugging Face key, transposed)} of every T5 encoder array, int8 scales included."""
    names = {}
    for ours, (key, *_), tag in leaf_rules(t5_rules(num_layers)):
        names[ours] = (key, tag == "matrix")
        if tag == "matrix":
            names[ours.removesuffix("kernel") + "scale"] = (key.removesuffix("weight") + INT8_SCALE, False)
    return names


def to_hf(part, names):
    """One part of `pixart_jax.models.t5.encoder_parts` with Hugging Face keys and layouts ((out, in) linears)."""
    out = {}
    for ours, value in part.items():
        key, transposed = names[ours]
        out[key] = np.ascontiguousarray(np.asarray(value).T) if transposed else value
    return out


def export_int8_t5(src, dst, dtype: TorchDType | str | None = None):
    """Writes the int8 T5 of the Hugging Face T5 folder `src` (float, single or sharded safetensors or .bin) to the
    folder `dst`, reading and quantising one block at a time. `dtype` ("float32", "bfloat16", "float16") stores the
    tensors that stay float (embedding, norms, position bias) in that dtype; None keeps the source's. The output
    appears only when complete. Returns `dst`."""
    cast = None if dtype is None else choose(TorchDType, dtype, "dtype").numpy
    cfg, specs, parts = encoder_parts(src, int8=True)
    names = hf_names(cfg.num_layers)
    hf_specs = {}  # in the parts' order, so that `produce` holds one block at a time
    for ours, (kind, shape) in specs.items():
        key, transposed = names[ours]
        stays_float = kind != np.int8 and not ours.endswith(".scale")
        hf_specs[key] = (cast if cast is not None and stays_float else kind, shape[::-1] if transposed else shape)
    pending = {}

    def produce(key):
        while key not in pending:
            pending.update(to_hf(next(parts), names))
        value = pending.pop(key)
        return np.asarray(value, hf_specs[key][0])

    config = read_json(os.path.join(src, "config.json"))
    with atomic_directory(dst) as tmp:
        write_safetensors(os.path.join(tmp, WEIGHTS), hf_specs, produce, {"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({**config, INT8_CONFIG_KEY: INT8_FORMAT}, f, indent=2)
    return dst
