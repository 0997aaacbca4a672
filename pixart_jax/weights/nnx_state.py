"""Flat views of an NNX model's variables as {dotted path: array}, and building a model from one."""
import jax
import numpy as np
from flax import nnx

from pixart_jax.models.lora import refuse_adapters
from pixart_jax.weights.errors import WeightsError


def _dotted(path):
    return ".".join(str(p) for p in path)


def abstract_shapes(make_model):
    """{path: shape} of every variable of the model `make_model()` would build, without allocating it."""
    _, state = nnx.split(nnx.eval_shape(make_model))
    return {_dotted(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}


def flat_arrays(model):
    """{path: array} of every variable (parameters and buffers) of `model`, a model without LoRA adapters."""
    refuse_adapters(model, f"saving a {type(model).__name__}")
    return {_dotted(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


def build_model(make_model, arrays, where="checkpoint"):
    """The model `make_model()` describes, with every variable taken from `arrays` (cast to its dtype)."""
    graphdef, state = nnx.split(nnx.eval_shape(make_model))
    filled = {}
    for path, var in nnx.to_flat_state(state):
        key, spec = _dotted(path), var.get_value()
        if key not in arrays:
            raise WeightsError(f"{where}: no value for parameter {key} (shape {tuple(spec.shape)})")
        value = np.asarray(arrays[key])
        if value.shape != tuple(spec.shape):
            raise WeightsError(f"{where}: parameter {key} has shape {value.shape}, model expects "
                                  f"{tuple(spec.shape)}")
        filled[path] = var.replace(jax.numpy.asarray(value, dtype=spec.dtype))
    extra = sorted(set(arrays) - {_dotted(p) for p in filled})
    if extra:
        raise WeightsError(f"{where}: unexpected entries {extra[:10]} not part of the model")
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
