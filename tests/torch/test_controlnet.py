"""The PyTorch ControlNet-Transformer (pixart_jax.torch.controlnet) against the official PixArt-alpha wrappers'
outputs (fixtures made with random weights in the original layout, /work/shared/fixtures/controlnet-*-tiny/) and
against our JAX PixArtControlNet on the same inputs: with and without control, ≤ 1e-5 relative in fp32."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from pixart_jax.models.controlnet import ControlNetConfig  # noqa: E402
from pixart_jax.torch import load_controlnet  # noqa: E402
from pixart_jax.weights import WeightsError  # noqa: E402
from pixart_jax.weights.controlnet import base_config, save_controlnet_jax  # noqa: E402
from pixart_jax.weights.controlnet import load_controlnet as load_jax_controlnet  # noqa: E402
from tests.helpers.controlnet_fixtures import run_torch  # noqa: E402
from tests.helpers.fixtures import shared_fixture  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402


def fixture(name):
    """(fixture folder: controlnet.pth + the official constructor's config.json, its inputs and outputs)."""
    folder = shared_fixture(f"controlnet-{name}-tiny")
    return folder, dict(np.load(folder / "io.npz"))


@pytest.mark.parametrize("name", ["ms", "512"])
def test_matches_the_official_wrapper_and_the_jax_controlnet(name):
    folder, io = fixture(name)
    model = load_controlnet(str(folder))
    copies = len(model.controlnet)
    assert copies == 3 and hasattr(model.controlnet[0], "before_proj")
    assert not hasattr(model.controlnet[1], "before_proj")
    jax_model = load_jax_controlnet(str(folder))
    micro = jax_model.cfg.micro_conditions
    assert model.config.use_additional_conditions == micro == (name == "ms")
    for control, expected in ((True, io["out"]), (False, io["out_without_control"])):
        ours = run_torch(model, io, control)
        jax_out = np.asarray(jax_model(io["x"], io["t"], io["y"], io["mask"], control=io["c"] if control else None,
                                       **(dict(resolution=io["img_hw"], aspect_ratio=io["aspect_ratio"]) if micro
                                          else {})))
        official, versus_jax = rel_error(ours, expected), rel_error(ours, jax_out)
        print(f"{name}, control={control}: torch vs official {official:.2e}, torch vs JAX {versus_jax:.2e} relative")
        assert official <= 1e-5 and versus_jax <= 1e-5
    assert rel_error(io["out"], io["out_without_control"]) > 0.05  # control changes the output


def test_every_layout_and_the_null_caption(tmp_path):
    folder, io = fixture("ms")
    model = load_controlnet(str(folder))
    cfg = base_config(str(folder))
    assert tuple(model.y_embedding.shape) == (cfg.max_tokens, cfg.caption_channels)
    np.testing.assert_array_equal(model.y_embedding.numpy(), model.base_model.y_embedding.numpy())
    expected = run_torch(model, io, True)
    from_pth = load_controlnet(str(folder / "controlnet.pth"), cfg)  # a file needs the base architecture
    np.testing.assert_array_equal(run_torch(from_pth, io, True), expected)
    save_controlnet_jax(load_jax_controlnet(str(folder)), str(tmp_path / "jax"))
    assert base_config(str(tmp_path / "jax")) == cfg
    np.testing.assert_array_equal(run_torch(load_controlnet(str(tmp_path / "jax")), io, True), expected)


def test_errors(tmp_path):
    folder, _ = fixture("ms")
    cfg = base_config(str(folder))
    with pytest.raises(ValueError, match="holds 3 copied blocks .*, not copies=4"):
        load_controlnet(str(folder / "controlnet.pth"), ControlNetConfig(cfg, 4))
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_controlnet(str(folder / "controlnet.pth"), cfg.replace(caption_channels=16))
    with pytest.raises(WeightsError, match="cannot tell the ControlNet variant"):
        load_controlnet(str(folder / "controlnet.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        load_controlnet(str(tmp_path / "missing.pth"))
