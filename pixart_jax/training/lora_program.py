"""What every LoRA training program shares (a `lora:` section in train.pretrain, train.lcm, train.pcm): the model is
`model.init_from` with new adapters, the state holds the base once as `frozen` (never differentiated, left out of
checkpoints: a resume loads `model.init_from` again) beside the program's adapter trees, and a finished run writes
an adapter as a PEFT folder."""
import dataclasses

import jax
from flax import nnx
from jax.experimental import multihost_utils

from pixart_jax import sharding
from pixart_jax.training.lora_step import split_adapted
from pixart_jax.training.program import Program
from pixart_jax.weights.lora import add_lora, save_lora


class LoRAProgram(Program):
    """The model and networks of a LoRA program: a program class subclasses (ItsProgram, LoRAProgram), so that
    its own `networks` (if any) widens these, and supplies `initial_state(adapters, params, buffers, ...)`."""
    unsaved = ("frozen",)

    def model(self):
        lora = self.cfg.lora
        return add_lora(super().model(), list(lora.targets), lora.rank, lora.alpha, use_rslora=lora.use_rslora,
                        init=lora.init, seed=self.cfg.seed, dropout=lora.dropout)

    def networks(self, model, abstract=False):
        """(the adapters, the base's parameters, the buffers) as pure dicts, and their logical axes."""
        return split_adapted(model)[1:], sharding.variable_axes(model)


def adapted_model(result, adapters="params"):
    """The adapted PixArtTransformer of a LoRA run's result (its state's global arrays), with the adapter trees of
    state key `adapters`."""
    state = result.state
    return nnx.merge(result.graphdef, state[adapters], state["frozen"], state["buffers"])


def export_lora(result, directory, base=None, adapters="params"):
    """Writes the adapter of state key `adapters` as a PEFT folder `directory` (base_model_name_or_path `base`).
    Every process gathers the adapters; process 0 writes. The base enters only as shapes (what the export reads of
    it), so the frozen weights are never gathered."""
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    state = {adapters: multihost_utils.process_allgather(result.state[adapters], tiled=True),
             "frozen": shapes(result.state["frozen"]), "buffers": shapes(result.state["buffers"])}
    if jax.process_index() == 0:
        model = adapted_model(dataclasses.replace(result, state=state), adapters)
        save_lora(model, directory, base_model_name_or_path=base)
