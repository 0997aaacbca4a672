"""Inputs the sampler and loss tests share: random latents of one SHAPE, the spec's golden inputs and the float64
ᾱ table the NumPy references use."""
import jax.numpy as jnp
import numpy as np

SHAPE = (2, 4, 8, 8)


def randn(seed, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def abar64():
    return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


def golden_tensors():
    """consistency.md §4.2: x = (i - 7.5)/8, ε̂ = sin i, z = cos i, i = 0…15, shape (1, 4, 2, 2), in float64."""
    i = np.arange(16, dtype=np.float64)
    return ((i - 7.5) / 8).reshape(1, 4, 2, 2), np.sin(i).reshape(1, 4, 2, 2), np.cos(i).reshape(1, 4, 2, 2)


def golden_inputs():
    """golden_tensors() as float32 JAX arrays."""
    return [jnp.asarray(v, jnp.float32) for v in golden_tensors()]


def assert_golden(out, first4, total):
    out = np.asarray(out, np.float64).ravel()
    np.testing.assert_allclose(out[:4], first4, rtol=2e-6)
    np.testing.assert_allclose(out.sum(), total, rtol=2e-6)
