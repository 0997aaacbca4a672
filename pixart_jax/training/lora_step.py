"""LoRA fine-tuning's train state and update: PixArt's loss, AdamW on the adapters alone.

The state is a dict of global jax.Arrays: `params` (the adapters' A and B, models.lora.LoRAParam, float32,
trained), `frozen` (the base model's nnx.Params in the compute dtype, never differentiated: the PixArt LoRA script
casts its frozen transformer to the mixed-precision dtype too, halving the base's memory in bf16), `buffers`,
`opt` (AdamW of the adapters only; no EMA), `step`, `rng`. The frozen base passes through every step bitwise
unchanged; checkpoints leave it out (the loop takes it from `model.init_from` again). It runs in step.TrainStep
(explicit shardings, donated state, `fold_in(rng, step)`). Adapters with lora_dropout drop their inputs by keys drawn
from the step's key, so a step is deterministic for a seed and a resumed run draws what an uninterrupted one would.
"""
import jax
from flax import nnx

from pixart_jax.models.lora import LoRAParam, set_dropout_keys
from pixart_jax.training.loss import diffusion_tables
from pixart_jax.training.state import common_state

DROPOUT_STREAM = 1  # the step key's fold the adapters' dropout keys are drawn from


def split_adapted(model):
    """(graphdef, adapters, params, buffers): the structure of an adapted model and pure-dict trees of its
    LoRAParams, its nnx.Params and its other variables."""
    graphdef, adapters, params, buffers = nnx.split(model, LoRAParam, nnx.Param, ...)
    return graphdef, *map(nnx.to_pure_dict, (adapters, params, buffers))


def lora_state(tx, seed, adapters, params, buffers, dtype):
    """The LoRA state: the adapters trained, the base frozen in `dtype` (the compute dtype)."""
    frozen = jax.tree.map(lambda p: p.astype(dtype), params)
    return {**common_state(tx, seed, adapters, buffers), "params": adapters, "frozen": frozen}


def lora_update(graphdef, optimizer, objective):
    """The update `(state, batch, key) -> (state, metrics {loss, grad_norm, lr, and the objective's parts})` of the
    adapters by `objective`'s loss (a pretraining.PixArtObjective); the gradient is taken of the adapters only."""
    tables = diffusion_tables()

    def update(state, batch, key):
        buffers = state["buffers"]

        def loss_fn(adapters):
            # the dropout keys come from their own fold of the step's key: the training inputs' draws stay as they are
            model = set_dropout_keys(nnx.merge(graphdef, adapters, state["frozen"], buffers),
                                     jax.random.fold_in(key, DROPOUT_STREAM))
            return objective.loss(model, batch, key, tables, buffers["y_embedding"])

        params, opt, _, metrics = optimizer.update(loss_fn, state["params"], state["opt"], None, 0.0, state["step"],
                                                   has_aux=True)
        return dict(state, params=params, opt=opt), metrics
    return update
