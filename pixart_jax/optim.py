"""CAME (Luo et al. 2023, arXiv 2307.02047), the optimizer PixArt-Σ trains with, as an optax transformation.

Adafactor's factored second moment (a row and a column average of g² per matrix, so a (m, n) weight keeps m + n
numbers instead of m·n) with its update clipped to RMS `clip_threshold`, a momentum of that update, and CAME's
confidence term: the instability (update − momentum)² is factored the same way and scales the momentum before it
is applied. Parameters of fewer than 2 dims keep an unfactored g² average and apply the momentum as is. Weight
decay is decoupled (p ← p − lr·wd·p). Numerics follow the `came-pytorch` package (PixArt-Σ's `CAMEWrapper` is its
`CAME`): the moments start at zero with no bias correction, eps[0] is added to g² and eps[1] to the instability.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Every moment has its parameter's rank (the averaged dims kept as size 1, a moment a parameter does not keep all
# size 1), so the parameter's logical axes place it on a mesh.


class CAMEState(NamedTuple):
    count: jax.Array      # optimizer steps done (the learning-rate schedule's argument)
    exp_avg: optax.Params  # momentum of the clipped update
    row: optax.Params      # factored g² average over the last dim (..., m, 1); unfactored leaves: all dims 1
    col: optax.Params      # ... over the second-to-last dim (..., 1, n)
    sq: optax.Params       # unfactored g² average (vectors, scalars); factored leaves: all dims 1
    res_row: optax.Params  # factored instability averages
    res_col: optax.Params


def _factored(x):
    return x.ndim >= 2


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _approx_inverse_sqrt(row, col):
    """1/√V̂ of a factored average (row (..., m, 1), col (..., 1, n)): V̂ = row ⊗ col / mean(row) (..., m, n)."""
    return jax.lax.rsqrt(row / jnp.mean(row, axis=-2, keepdims=True)) * jax.lax.rsqrt(col)


def _init_leaf(p):
    zeros = lambda shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    unused = (1,) * p.ndim
    if _factored(p):
        row, col, sq = zeros(p.shape[:-1] + (1,)), zeros(p.shape[:-2] + (1,) + p.shape[-1:]), zeros(unused)
    else:
        row, col, sq = zeros(unused), zeros(unused), zeros(p.shape)
    return zeros(p.shape), row, col, sq, jnp.copy(row), jnp.copy(col)


def _update_leaf(g, exp_avg, row, col, sq, res_row, res_col, *, betas, eps, clip_threshold):
    """(direction, exp_avg, row, col, sq, res_row, res_col): one step of one parameter; the parameter moves by
    −lr · direction (before weight decay)."""
    b1, b2, b3 = betas
    g = g.astype(jnp.float32)
    g2 = jnp.square(g) + eps[0]
    if _factored(g):
        row = b2 * row + (1 - b2) * jnp.mean(g2, axis=-1, keepdims=True)
        col = b2 * col + (1 - b2) * jnp.mean(g2, axis=-2, keepdims=True)
        u = _approx_inverse_sqrt(row, col) * g
    else:
        sq = b2 * sq + (1 - b2) * g2
        u = jax.lax.rsqrt(sq) * g
    u = u / jnp.maximum(_rms(u) / clip_threshold, 1.0)
    exp_avg = b1 * exp_avg + (1 - b1) * u
    if not _factored(g):
        return exp_avg, exp_avg, row, col, sq, res_row, res_col
    instability = jnp.square(u - exp_avg) + eps[1]
    res_row = b3 * res_row + (1 - b3) * jnp.mean(instability, axis=-1, keepdims=True)
    res_col = b3 * res_col + (1 - b3) * jnp.mean(instability, axis=-2, keepdims=True)
    return _approx_inverse_sqrt(res_row, res_col) * exp_avg, exp_avg, row, col, sq, res_row, res_col


def came(learning_rate, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), clip_threshold=1.0, weight_decay=0.0):
    """CAME as an optax.GradientTransformation. `learning_rate`: a float or a schedule of the step count; `betas`:
    the decay rates of the update's momentum, of g² and of the instability; `eps`: what is added to g² and to the
    instability; `clip_threshold`: the largest RMS of the normalised update; `weight_decay`: decoupled, times lr."""
    if len(betas) != 3 or not all(0.0 <= b <= 1.0 for b in betas):
        raise ValueError(f"CAME betas must be three rates in [0, 1], got {betas}")
    if len(eps) != 2:
        raise ValueError(f"CAME eps must be a pair (g², instability), got {eps}")
    lr_at = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init(params):
        leaves = jax.tree.map(_init_leaf, params)
        fields = [jax.tree.map(lambda _, t, i=i: t[i], params, leaves) for i in range(6)]
        return CAMEState(jnp.zeros((), jnp.int32), *fields)

    def update(grads, state, params=None):
        if weight_decay and params is None:
            raise ValueError("CAME with weight_decay needs the params: tx.update(grads, state, params)")
        step = lambda g, *moments: _update_leaf(g, *moments, betas=betas, eps=eps,  # noqa: E731
                                                clip_threshold=clip_threshold)
        out = jax.tree.map(step, grads, *state[1:])
        field = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)  # noqa: E731
        lr = lr_at(state.count)
        updates = jax.tree.map(lambda d: -lr * d, field(0))
        if weight_decay:
            updates = jax.tree.map(lambda u, p: u - lr * weight_decay * p, updates, params)
        return updates, CAMEState(optax.safe_increment(state.count), *(field(i) for i in range(1, 7)))

    return optax.GradientTransformation(init, update)
