"""Logical axes are declared where parameters are made; the mesh rules place them (FSDP over kernel_in)."""
import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.sharding import make_mesh, tree_shardings, variable_axes

RULES = {"layers": None, "kernel_in": "fsdp", "kernel_out": None, "table": None}


def test_every_parameter_of_the_transformer_declares_its_axes():
    model = nnx.eval_shape(lambda: PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)))
    axes = variable_axes(model)
    assert axes["blocks.attn.qkv.kernel"] == ("layers", "kernel_in", "kernel_out")
    assert axes["blocks.scale_shift_table"] == ("layers", None, "table")
    assert axes["x_embedder.kernel"] == (None, None, "kernel_in", "kernel_out")
    assert "y_embedding" not in axes  # the null-caption buffer stays whole
    _, params, _ = nnx.split(model, nnx.Param, ...)
    assert set(axes) == {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}


def test_a_parameter_without_axes_is_an_error():
    class Bare(nnx.Module):
        def __init__(self):
            self.table = nnx.Param(jax.numpy.zeros((3, 4)))
            self.scale = nnx.Param(jax.numpy.zeros((4,)))  # 1-D parameters may stay replicated

    with pytest.raises(ValueError, match=r"without logical axes .*: table \(3, 4\)"):
        variable_axes(Bare())


def test_fsdp_rules_shard_kernels_on_their_input_dim():
    model = nnx.eval_shape(lambda: PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    state = {"params": nnx.to_pure_dict(params)}
    shardings = tree_shardings(state, make_mesh(4, 2), RULES, variable_axes(model))["params"]
    assert shardings["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", None)
    assert shardings["blocks"]["mlp"]["fc1"]["bias"].spec == P(None, None)
    assert shardings["x_embedder"]["kernel"].spec == P(None, None, "fsdp", None)
