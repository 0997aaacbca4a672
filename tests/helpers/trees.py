"""Pytrees of parameters in the train-step tests: perturbed models and the largest difference between two trees."""
import jax
import numpy as np
from flax import nnx

from pixart_jax.training.state import split_model


def perturbed(model):
    """The model with noise added to every parameter: a fresh PixArt's zero-initialised output layer predicts
    ε = 0 everywhere, which makes the LCD loss ~0 and its gradient pure rounding noise (that Adam, eps 1e-10, would
    turn into full-size steps)."""
    graphdef, params, buffers = split_model(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy), buffers)


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
