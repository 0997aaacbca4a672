"""Where a consistency distillation (LCD, PCM) keeps its teacher, student and EMA target in the train state, and how
each becomes a model. The updates (lcm_step.py, pcm_step.py) see only this interface: `model(state, weights)` is the
network of a student-shaped tree (the student being differentiated, the target), `teacher(state)` the teacher.

- FullCopies: three full fp32 weight trees, `teacher` (frozen), `student`, `target` (PixArt-δ, PCM).
- AdapterCopies (a `lora:` section): `student` and `target` are LoRA adapter trees on one base, `frozen`, held once;
  the teacher is that base with the adapters off (PixArt-LCM-LoRA): a full model copy less than FullCopies.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.lora import set_adapters
from pixart_jax.training.lora_step import split_adapted
from pixart_jax.training.state import common_state, split_model


def consistency_state(tx, seed, ema_target, student, buffers, **fixed):
    """The common state of `student` (the trained tree, the optimizer's), its EMA target (a copy, if
    `ema_target`) and the untrained trees `fixed` (by their state keys)."""
    state = {**common_state(tx, seed, student, buffers), **fixed, "student": student}
    if ema_target:
        state["target"] = jax.tree.map(jnp.copy, student)
    return state


@dataclasses.dataclass(frozen=True)
class FullCopies:
    """Teacher, student and target as full weight trees of the model `graphdef`."""
    graphdef: nnx.GraphDef

    @classmethod
    def of(cls, model):
        return cls(split_model(model)[0])

    @staticmethod
    def initial_state(tx, seed, ema_target, params, buffers):
        """Teacher, student (and target) all start as the model's weights `params`."""
        return consistency_state(tx, seed, ema_target, jax.tree.map(jnp.copy, params), buffers, teacher=params)

    def model(self, state, weights):
        return nnx.merge(self.graphdef, weights, state["buffers"])

    def teacher(self, state):
        return self.model(state, state["teacher"])


@dataclasses.dataclass(frozen=True)
class AdapterCopies:
    """Student and target as adapter trees of the adapted model `graphdef` on the state's `frozen` base; the teacher
    is `off`: the same modules with no adapter active."""
    graphdef: nnx.GraphDef
    off: nnx.GraphDef

    @classmethod
    def of(cls, model):
        # With no adapter active a module returns what its base computed (models/lora.py: LoRA.__call__), so the
        # teacher is the base model exactly, reads the one frozen base (no copy) and computes no adapter product
        # (zeroed adapters would be as exact but still multiply by them). clone shares the arrays: nothing copied.
        return cls(split_adapted(model)[0], split_adapted(set_adapters(nnx.clone(model), []))[0])

    @staticmethod
    def initial_state(tx, seed, ema_target, adapters, params, buffers):
        """The student's adapters start as drawn (B = 0: the student computes what the base does), the base
        `params` frozen."""
        return consistency_state(tx, seed, ema_target, adapters, buffers, frozen=params)

    def model(self, state, adapters):
        return nnx.merge(self.graphdef, adapters, state["frozen"], state["buffers"])

    def teacher(self, state):
        # the student's adapters only fill the structure: inactive, they enter no computation
        return nnx.merge(self.off, state["student"], state["frozen"], state["buffers"])
