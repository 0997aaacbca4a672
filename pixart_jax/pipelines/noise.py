"""The random draws of one seeded pipeline call, as every backend makes them: root = jax.random.key(seed), split
into the initial latents' key and the sampler's key (whose per-step noise `pixart_jax.samplers.base` draws). The
PyTorch path draws from these same keys by default, so one seed gives one image on both backends."""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class CallKeys(NamedTuple):
    root: jax.Array      # jax.random.key(seed); the control image's posterior noise comes from it too
    latents: jax.Array   # the initial latents' key
    sampler: jax.Array   # the sampler's key (one split per step)


def call_keys(seed: int) -> CallKeys:
    """The keys of a call with `seed` (an integer checked by GenerationRequest)."""
    root = jax.random.key(seed)
    return CallKeys(root, *jax.random.split(root))


def initial_latents(key, shape) -> jax.Array:
    """float32 N(0, 1) initial latents of `shape` (images, C, h, w) from CallKeys.latents."""
    return jax.random.normal(key, shape, jnp.float32)
