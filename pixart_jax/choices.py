"""Named choices as `str` enums (a config schema rejects any other value with the allowed list), and the dtype
tables: `DType` (the JAX models) and `TorchDType` (the PyTorch path and stored floats, float16 included)."""
import enum

import jax.numpy as jnp
import numpy as np


def choose(kind, value, what):
    """`value` as a member of the str Enum `kind`; a ValueError naming `what` and the allowed values otherwise."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[m.value for m in kind]}, got {value!r}") from None


class DType(enum.StrEnum):
    """Compute dtypes of the JAX models (matmuls and convolutions; parameters stay float32)."""
    float32 = "float32"
    bfloat16 = "bfloat16"

    @property
    def jax(self):
        return jnp.dtype(self.value)


class TorchDType(enum.StrEnum):
    """Compute dtypes of the PyTorch path (`pixart_jax.torch`), which float16 GPUs need, and storage dtypes of
    exported float tensors: DType's names plus float16."""
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    @property
    def numpy(self):
        return np.dtype(jnp.dtype(self.value))

    @property
    def torch(self):
        import torch  # only the PyTorch path asks, and it has torch

        return getattr(torch, self.value)


class Int8Backend(enum.StrEnum):
    """How the PyTorch path stores T5 in int8."""
    weight_only = "weight-only"    # every linear as pixart_jax.int8's codes and scales: the JAX path's numbers
    bitsandbytes = "bitsandbytes"  # transformers' LLM.int8 (the reference recipe; `wo` stays float)
