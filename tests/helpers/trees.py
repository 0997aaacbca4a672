"""Pytrees of parameters in the train-step tests: perturbed models, a saved random base to fine-tune and the
largest difference between two trees."""
import jax
import numpy as np
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.training.state import split_model
from pixart_jax.weights.transformer import save_jax


def perturbed(model):
    """The model with noise added to every parameter: a fresh PixArt's zero-initialised output layer predicts
    ε = 0 everywhere, which makes the LCD loss ~0 and its gradient pure rounding noise (that Adam, eps 1e-10, would
    turn into full-size steps)."""
    graphdef, params, buffers = split_model(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy), buffers)


def save_random_tiny(path, seed=3, config=PRESETS["tiny"]):
    """Saves a tiny PixArt (`config`) with every parameter drawn at random to `path` (our layout) and returns the
    path as a str: a base to fine-tune LoRA adapters on (a fresh PixArt's zero output layer would give them zero
    gradients)."""
    save_jax(redraw_nnx(PixArtTransformer(config, rngs=nnx.Rngs(seed)), seed), str(path))
    return str(path)


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
