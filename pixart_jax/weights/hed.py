"""Reading a `ControlNetHED.pth` (or a safetensors file with its keys) into our HED network (pixart_jax.models.hed)."""
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.hed import HED, STAGES
from pixart_jax.weights.files import read_state_dict
from pixart_jax.weights.keymaps.hed import hed_rules
from pixart_jax.weights.mapping import import_weights
from pixart_jax.weights.nnx_state import abstract_shapes, build_model


def load_hed(path, dtype=jnp.float32) -> HED:
    """The HED network of a `ControlNetHED.pth` (the standard layout: `norm`, `block{1..5}.convs.{j}`,
    `block{1..5}.projection`), a torch.save file read without torch, or a safetensors file with the same keys."""
    make = lambda: HED(dtype, rngs=nnx.Rngs(0))  # noqa: E731
    arrays = import_weights(hed_rules([n for n, _ in STAGES]), read_state_dict(path), abstract_shapes(make), where=path)
    return build_model(make, arrays, where=path)
