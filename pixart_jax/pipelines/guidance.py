"""Classifier-free guidance: the one batched forward of the unconditional and conditional halves, and the guided
combination (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6: ε̃ = ε_u + s (ε_c - ε_u)).

Callers (the pipeline, training sample grids, LCD/PCM teachers) each combine the two halves their own way.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Caption(NamedTuple):
    """A batch of caption features (B, L, C) and their 0/1 attention mask (B, L)."""
    embeds: jax.Array
    mask: jax.Array


def _twice(a):
    return None if a is None else jnp.concatenate([a, a])


def guided_forward(model_fn, x, t, cond: Caption, uncond: Caption, **shared):
    """(out_uncond, out_cond): `model_fn(x, t, embeds, mask, **shared)` once on the doubled batch [uncond, cond].

    x (B, ...) and t (B,) are the same in both halves, and so is every `shared` keyword (micro-conditions
    resolution / aspect_ratio, ControlNet control latents; None stays None)."""
    out = model_fn(_twice(x), _twice(t), jnp.concatenate([uncond.embeds, cond.embeds]),
                   jnp.concatenate([uncond.mask, cond.mask]), **{k: _twice(v) for k, v in shared.items()})
    return tuple(jnp.split(out, 2))


def guide(out_uncond, out_cond, scale, channels=None):
    """out_u + scale (out_c - out_u) on the first `channels` channels (axis 1; None: all of them); the remaining
    channels (a learned variance) are the conditional half's. channels=3 is the original repo's IDDPM wrapper,
    which guides only ε channels 0-2 (inherited from DiT's `models.py` `forward_with_cfg`)."""
    guided = out_uncond + scale * (out_cond - out_uncond)
    if channels is None:
        return guided
    return jnp.concatenate([guided[:, :channels], out_cond[:, channels:]], axis=1)
