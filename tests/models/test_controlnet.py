"""PixArtControlNet against the official PixArt-alpha ControlNet code: the two tiny fixtures in shared/ (outputs of
`ControlPixArtMSHalf` and `ControlPixArtHalf` on random weights), loaded from their own directory format."""
import pathlib

import numpy as np
import pytest

from pixart_jax.weights.controlnet import from_state_dict, load_controlnet
from pixart_jax.weights.files import read_state_dict
from tests.helpers.controlnet_fixtures import CLASSES, fixture, run
from tests.helpers.parity import rel_error


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("control", [True, False])
def test_fixture_parity(name, control):
    directory, io = fixture(name)
    model = load_controlnet(directory)
    assert model.num_copies == 3 and model.cfg.depth == 5 and model.cfg.micro_conditions == (name == "ms")
    expected = io["out"] if control else io["out_without_control"]
    err = rel_error(run(model, io, control, micro=name == "ms"), expected)
    print(f"{CLASSES[name]} {'with' if control else 'without'} control: rel error {err:.2e}")
    assert err <= 1e-5


def test_control_changes_the_output_as_much_as_the_reference_says():
    """The two reference outputs differ by up to ~0.7: a port that ignored the control would fail the parity."""
    for name in CLASSES:
        _, io = fixture(name)
        assert np.abs(io["out"] - io["out_without_control"]).max() > 0.3


def test_fixed_size_class_adds_the_stored_position_table():
    """ControlPixArtHalf adds `base_model.pos_embed` as stored to the image tokens (not the control tokens); the
    multi-scale class never reads it."""
    for name, used in (("512", True), ("ms", False)):
        directory, io = fixture(name)
        state = dict(read_state_dict(str(pathlib.Path(directory) / "controlnet.pth")))
        model = load_controlnet(directory)
        state["base_model.pos_embed"] = state["base_model.pos_embed"] + 0.5
        shifted = from_state_dict(state, model.config)
        micro = name == "ms"
        if used:
            np.testing.assert_array_equal(np.asarray(shifted.pos_embed[...]), state["base_model.pos_embed"])
            assert rel_error(run(shifted, io, micro=micro), io["out"]) > 1e-3
        else:
            assert shifted.pos_embed is None
            np.testing.assert_array_equal(run(shifted, io, micro=micro), run(model, io, micro=micro))


def test_bf16_compute_stays_close_to_the_reference():
    import jax.numpy as jnp

    directory, io = fixture("ms")
    model = load_controlnet(directory, dtype=jnp.bfloat16)
    assert model.base.t_block.kernel.dtype == jnp.float32 and model.copies.attn.qkv.kernel.dtype == jnp.float32
    assert rel_error(run(model, io), io["out"]) <= 3e-2  # bf16 has an 8-bit mantissa
