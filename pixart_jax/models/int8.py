"""Weight-only int8 linears: int8 kernels with one scale per output channel, dequantised inside the matmul.

T5-XXL's linears hold nearly all of its 4.7B parameters, so storing them as int8 halves the text encoder's
memory against bf16. Activations stay in the compute dtype; only the stored weights are quantised.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Int8Linear(nnx.Module):
    """y = (x @ q) * scale, with q int8 (in, out) and scale (out,): equal to x @ (q * scale), one matmul."""

    def __init__(self, in_features, out_features, *, dtype=jnp.float32):
        self.kernel = nnx.Param(jnp.zeros((in_features, out_features), jnp.int8))
        self.scale = nnx.Param(jnp.ones((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y * self.scale[...].astype(self.dtype)


def quantize_kernel(kernel):
    """(in, out) float kernel -> (int8 kernel, float32 scale per output column), symmetric, max |w| -> 127."""
    kernel = np.asarray(kernel, np.float32)
    scale = np.abs(kernel).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(kernel / scale), -127, 127).astype(np.int8), scale


def quantize_linears(arrays, linear_paths):
    """Replaces `path.kernel` of every path in `linear_paths` by an int8 `path.kernel` plus `path.scale`."""
    out = dict(arrays)
    for path in linear_paths:
        key = f"{path}.kernel"
        if key in out:
            out[key], out[f"{path}.scale"] = quantize_kernel(out[key])
    return out


def parameter_bytes(model):
    """Bytes held by every variable of an NNX model (what its weights cost in device memory)."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(nnx.state(model)))
