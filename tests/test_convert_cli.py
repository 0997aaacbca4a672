"""`python -m convert.pixart`: conversions between layouts, inspect, and nothing left behind on failure."""

import numpy as np
import pytest
from flax import nnx

from pixart_jax import checkpoints, conversion
from pixart_jax.config import PRESETS
from pixart_jax.transformer import PixArtTransformer
from pixart_jax.weights.nnx_state import flat_arrays
from tests.commands import run_module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(7))
    path = tmp_path_factory.mktemp("src") / "transformer"
    checkpoints.save_diffusers(model, str(path))
    return model, str(path)


def test_chain_of_conversions_preserves_every_parameter(model_dir, tmp_path):
    model, src = model_dir
    jax_dir = conversion.convert(src, str(tmp_path / "jax"), "jax")
    pth = conversion.convert(jax_dir, str(tmp_path / "orig"), "original")
    assert pth.endswith("PixArt.pth")
    back = conversion.convert(pth, str(tmp_path / "diffusers"), "diffusers", config="tiny")
    want, got = flat_arrays(model), flat_arrays(checkpoints.load_transformer(back))
    for key in want:
        if key != "y_embedding":  # diffusers stores no null caption
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def test_cli_inspect_and_failure_leaves_nothing(model_dir, tmp_path):
    _, src = model_dir
    run = run_module("convert.pixart", "inspect", src)
    assert run.returncode == 0, run.stderr
    assert "diffusers layout" in run.stdout and "transformer_blocks.1.attn1.to_q.weight" in run.stdout
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"garbage")
    dst = tmp_path / "out"
    run = run_module("convert.pixart", "--src", bad, "--dst", dst, "--to", "diffusers", "--config", "tiny")
    assert run.returncode == 1 and "is not a safetensors file" in run.stderr
    assert list(tmp_path.iterdir()) == [bad]
