"""ControlNet-Transformer train state and update (PixArt-δ, spec §5.2, §5.4).

The state is a dict of global jax.Arrays: `params` (the copies and zero linears, trained), `frozen` ({"base": the
base's parameters}), `buffers`, `opt` (AdamW of `params` only: no EMA, the reference keeps none), `step`, `rng`. The
update: PixArt's loss of the ControlNet on the batch's control latents, AdamW on the branch; the frozen base passes
through every step bitwise unchanged. It runs in step.TrainStep (explicit shardings, donated state,
`fold_in(rng, step)`).
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.vae import LATENT_SCALE, AutoencoderKL
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.state import common_state

BASE = "base"  # the frozen part of the model's parameter tree


def controlnet_state(tx, seed, params, buffers):
    """The ControlNet state of a PixArtControlNet's parameters: the branch trained, the base frozen."""
    trainable = {k: v for k, v in params.items() if k != BASE}
    return {**common_state(tx, seed, trainable, buffers), "params": trainable, "frozen": {BASE: params[BASE]}}


def draw_control(key, batch, latent_scale=LATENT_SCALE):
    """latent_scale · (control_mean + control_std · N(0, I)): a fresh sample of the control image's posterior."""
    return latent_scale * AutoencoderKL.sample(jnp.asarray(batch["control_mean"], jnp.float32),
                                               jnp.asarray(batch["control_std"], jnp.float32), key)


def controlnet_update(graphdef, optimizer, objective):
    """The update `(state, batch, key) -> (state, metrics {loss, grad_norm, lr})` of the branch by PixArt's loss
    (`objective`: a pretraining.PixArtObjective) with the batch's control latents."""
    tables = diffusion_tables()

    def update(state, batch, key):
        key, k_control = jax.random.split(key)
        buffers = state["buffers"]

        def loss_fn(params):
            model = nnx.merge(graphdef, {**params, **state["frozen"]}, buffers)
            inputs = draw_training_inputs(key, batch, tables, objective.caption_dropout, buffers[BASE]["y_embedding"],
                                          objective.latent_scale)
            control = draw_control(k_control, batch, objective.latent_scale)
            return pixart_loss(functools.partial(model, control=control), batch, tables, *inputs,
                               objective.prediction_type)

        params, opt, _, metrics = optimizer.update(loss_fn, state["params"], state["opt"], None, 0.0, state["step"])
        return dict(state, params=params, opt=opt), metrics
    return update
