"""The PyTorch ControlNet-Transformer (pixart_jax.torch.controlnet) against the official PixArt-alpha wrappers'
outputs (fixtures made with random weights in the original layout, /work/shared/fixtures/controlnet-*-tiny/):
with and without control, ≤ 1e-5 relative in fp32."""
import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from pixart_jax.config import PixArtConfig  # noqa: E402
from pixart_jax.torch import load_controlnet  # noqa: E402
from pixart_jax.weights import CheckpointError  # noqa: E402
from tests.parity import rel_error  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def fixture(name):
    """(PixArtConfig of the base, copies, fixture folder) of controlnet-{name}-tiny."""
    folder = FIXTURES / f"controlnet-{name}-tiny"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there")
    c = json.loads((folder / "config.json").read_text())
    cfg = PixArtConfig(depth=c["depth"], hidden_size=c["hidden_size"], num_heads=c["num_heads"],
                       patch_size=c["patch_size"], caption_channels=c["caption_channels"],
                       max_tokens=c["model_max_length"], sample_size=c["input_size"],
                       interpolation_scale=c["lewei_scale"], micro_conditions=c["multi_scale"])
    return cfg, c["copy_blocks_num"], folder


@pytest.mark.parametrize("name", ["ms", "512"])
def test_matches_the_official_wrapper(name):
    cfg, copies, folder = fixture(name)
    model = load_controlnet(str(folder / "controlnet.pth"), cfg, copies=copies)
    assert len(model.controlnet) == copies and hasattr(model.controlnet[0], "before_proj")
    assert not hasattr(model.controlnet[1], "before_proj")
    io = {k: torch.from_numpy(v) for k, v in np.load(folder / "io.npz").items()}
    added = {"resolution": io["img_hw"], "aspect_ratio": io["aspect_ratio"]} if cfg.micro_conditions else None
    with torch.inference_mode():
        for control, expected in ((io["c"], io["out"]), (None, io["out_without_control"])):
            (out,) = model(io["x"], io["y"], io["t"], added, io["mask"], control_latents=control, return_dict=False)
            err = rel_error(out.numpy(), expected.numpy())
            print(f"{name}, control={control is not None}: {err:.2e} relative")
            assert err <= 1e-5
    assert rel_error(io["out"].numpy(), io["out_without_control"].numpy()) > 0.05  # control changes the output


def test_null_caption_and_errors(tmp_path):
    cfg, copies, folder = fixture("ms")
    model = load_controlnet(str(folder / "controlnet.pth"), cfg, copies=copies)
    assert tuple(model.base_model.y_embedding.shape) == (cfg.max_tokens, cfg.caption_channels)
    with pytest.raises(ValueError, match="holds 3 copied blocks .*, not copies=4"):
        load_controlnet(str(folder / "controlnet.pth"), cfg, copies=copies + 1)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_controlnet(str(folder / "controlnet.pth"), cfg.replace(caption_channels=16), copies=copies)
