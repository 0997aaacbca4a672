"""What every sampler shares: the per-step protocol and one jittable denoising loop (a lax.scan over host tables).

A sampler turns `steps` into a NamedTuple of float32 tables with one row per step (built in float64 NumPy at trace
time, so they are constants of the compiled program) and provides `step(row, x, model_output, state, noise)`. The
loop calls the model once per row; inside `jax.jit` it compiles once per (input shape, steps).
"""
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def check_steps(steps):
    """The number of sampling steps as a Python int; ValueError unless it is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"number of steps must be a positive integer, got {steps!r}")
    return int(steps)


def as_tables(cls, **columns):
    """A tables NamedTuple from float64 host columns: every column cast to a float32 device array."""
    return cls(**{name: jnp.asarray(np.asarray(col, np.float64), jnp.float32) for name, col in columns.items()})


def table_row(tables, i):
    """Row `i` of a sampler's tables: the `row` argument of its `step`."""
    return jax.tree.map(lambda column: column[i], tables)


def step_keys(key, steps):
    """The per-step keys of a sampler key: step i injects `step_noise(step_keys(key, steps)[i], shape)`."""
    return jax.random.split(key, steps)


def step_noise(step_key, shape):
    """float32 N(0, 1) noise of `shape` from one of `step_keys`."""
    return jax.random.normal(step_key, shape, jnp.float32)


def f32(a):
    """`a` as a float32 array: every step computes in float32 whatever the sample dtype."""
    return jnp.asarray(a).astype(jnp.float32)


class Sampler:
    """Base of the samplers. Subclasses define `timesteps(steps)`, `tables(steps)` (with a `timestep` column) and
    `step(row, x, model_output, state, noise=None) -> (x_next, denoised, state)`; they may override the others."""

    def needs_noise(self, steps):
        """Whether sampling with `steps` steps injects fresh noise (then `sample` needs a key or the noise)."""
        return False

    def with_eta(self, eta):
        """The sampler with the stochasticity η of one pipeline call: diffusers' pipelines pass their `eta` to
        schedulers whose step takes one (DDIM's η, TCD's γ); the others ignore it."""
        return self

    def init_state(self, x):
        """The carried state before the first step (multistep solvers keep earlier model values)."""
        return ()

    def model_output_shape(self, x_shape):
        """The shape `model_fn(x, t)` must return for a sample of shape `x_shape`."""
        return tuple(x_shape)

    def sample(self, model_fn: Callable[[jax.Array, jax.Array], jax.Array], x_T: jax.Array, steps: int, *,
               key: jax.Array | None = None, noise: jax.Array | None = None,
               return_denoised: bool = False, groups: tuple[int, ...] | None = None) -> jax.Array:
        """Runs the whole denoising loop from `x_T`; jit-compatible (call it inside `jax.jit`).

        model_fn(x, t) -> model output, with `t` the (B,) float32 timesteps the model is conditioned on (already
        classifier-free guided by the caller). Fresh noise, where the sampler injects any, comes from `key` or from
        `noise` of shape (steps, *x_T.shape) (row i used at step i). Returns the final sample, or with
        `return_denoised` the last step's denoised estimate (x̂_0 / LCM's denoised), in x_T's dtype.

        `groups` (static row counts summing to the batch) with `key` an array of one key per group: each group's
        rows draw their noise from their own key as a batch of that many rows alone would, so independent calls
        batched together keep their samples (a dynamically batched server).
        """
        steps = check_steps(steps)
        x_T = jnp.asarray(x_T)
        tables = self.tables(steps)
        per_step = self._noise_source(x_T, steps, key, noise, groups)
        draw = key is not None and per_step is not None  # per_step holds keys, not noise
        expected = self.model_output_shape(x_T.shape)

        def body(carry, xs):
            x, _, state = carry
            row, source = xs
            out = model_fn(x, jnp.full((x.shape[0],), row.timestep, jnp.float32))
            if tuple(out.shape) != expected:
                raise ValueError(f"{type(self).__name__}: model_fn returned shape {tuple(out.shape)}, expected "
                                 f"{expected} for a sample of shape {tuple(x.shape)}")
            if draw:
                source = _group_noise(source, x.shape, groups)
            x, denoised, state = self.step(row, x, out, state, source)
            return (x, denoised, state), None

        init = (x_T, jnp.zeros(x_T.shape, jnp.float32), self.init_state(x_T))
        (x, denoised, _), _ = jax.lax.scan(body, init, (tables, per_step))
        return denoised.astype(x_T.dtype) if return_denoised else x

    def _noise_source(self, x_T, steps, key, noise, groups):
        """Per-step keys ((steps,) or (steps, groups)), given noise (steps, *shape), or None when nothing is
        injected."""
        if key is not None and noise is not None:
            raise ValueError("pass either key or noise, not both")
        if noise is not None:
            noise = jnp.asarray(noise)
            if tuple(noise.shape) != (steps, *x_T.shape):
                raise ValueError(f"noise must have shape (steps, *x_T.shape) = {(steps, *x_T.shape)}, "
                                 f"got {tuple(noise.shape)}")
            return noise
        if not self.needs_noise(steps):
            return None
        if key is None:
            raise ValueError(f"{type(self).__name__} injects fresh noise with {steps} steps: pass key= or noise=")
        if groups is None:
            return step_keys(key, steps)
        if sum(groups) != x_T.shape[0] or key.shape != (len(groups),):
            raise ValueError(f"groups {groups} need one key each (got keys of shape {key.shape}) and must sum to "
                             f"the batch {x_T.shape[0]}")
        return jax.vmap(lambda k: step_keys(k, steps), out_axes=1)(key)


def _group_noise(keys, shape, groups):
    """step_noise of `shape` from one step key, or from one step key per group of rows (concatenated): each group's
    rows as that group alone draws them."""
    if groups is None:
        return step_noise(keys, shape)
    return jnp.concatenate([step_noise(keys[i], (rows, *shape[1:])) for i, rows in enumerate(groups)])
