"""PixArt-Σ checkpoints: an original-layout `.pth` and its diffusers folder (in a PixArtSigmaPipeline folder) are the
same model, each exports back to the other's layout, and the released file names pick the Σ variants."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.models.transformer_config import PRESETS, preset  # noqa: E402
from pixart_jax.testing.random_weights import redraw  # noqa: E402
from pixart_jax.testing.reference_pipeline import TINY_TRANSFORMER  # noqa: E402
from pixart_jax.weights import transformer as transformer_weights  # noqa: E402
from pixart_jax.weights.conversion import convert  # noqa: E402
from pixart_jax.weights.nnx_state import flat_arrays  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402
from tests.helpers.transformer_io import inputs, original_layout, run_ours, run_reference  # noqa: E402

# PixArt-Σ 256's settings on a tiny model: sample_size 32, position interpolation 0.5, no micro-conditions.
TINY_SIGMA = dict(TINY_TRANSFORMER, sample_size=32, interpolation_scale=0.5, use_additional_conditions=False)
CONFIG = PRESETS["PixArt-Sigma-XL-2-256x256"].replace(depth=2, hidden_size=48, num_heads=2, caption_channels=32)


@pytest.fixture(scope="module")
def sigma(tmp_path_factory):
    """(diffusers reference, its PixArtSigmaPipeline folder, the same weights as an original .pth, y_embedding)."""
    root = tmp_path_factory.mktemp("sigma")
    ref = redraw(diffusers.PixArtTransformer2DModel(**TINY_SIGMA), 5).eval()
    ref.save_pretrained(root / "pipe" / "transformer", safe_serialization=True)
    (root / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    y_embedding = torch.randn(300, 32, generator=torch.Generator().manual_seed(6)) / np.sqrt(32)
    torch.save({"state_dict": original_layout(ref.state_dict(), y_embedding)}, root / "sigma.pth")
    return ref, str(root / "pipe"), str(root / "sigma.pth"), y_embedding.numpy()


def test_original_pth_and_diffusers_folder_are_the_same_model(sigma):
    ref, pipe, pth, y_embedding = sigma
    from_pth = transformer_weights.load_transformer(pth, config=CONFIG)
    from_folder = transformer_weights.load_transformer(pipe)
    assert from_folder.cfg == from_pth.cfg == CONFIG  # 300 tokens: the pipeline's class says so
    a, b = flat_arrays(from_pth), flat_arrays(from_folder)
    assert a.keys() == b.keys()
    for key in a.keys() - {"y_embedding"}:  # diffusers does not store the null caption
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    np.testing.assert_array_equal(np.asarray(from_pth.y_embedding[...]), y_embedding)
    x = inputs(2, 8, 12, tokens=300)
    expected = run_reference(ref, x, micro=False)
    assert rel_error(run_ours(from_pth, x, micro=False), expected) <= 1e-5
    np.testing.assert_array_equal(run_ours(from_folder, x, micro=False), run_ours(from_pth, x, micro=False))


def test_exports_back_to_both_layouts(sigma, tmp_path):
    ref, pipe, pth, _ = sigma
    written = convert(pth, str(tmp_path / "transformer"), "diffusers", config=CONFIG)
    reloaded = diffusers.PixArtTransformer2DModel.from_pretrained(written).eval()
    x = inputs(2, 12, 8, tokens=300)
    np.testing.assert_array_equal(run_reference(reloaded, x, micro=False), run_reference(ref, x, micro=False))
    assert transformer_weights.transformer_config(written) == CONFIG  # a lone folder keeps its 300 tokens
    back = convert(pipe, str(tmp_path / "again.pth"), "original")
    original, reread = torch.load(pth)["state_dict"], torch.load(back)["state_dict"]
    assert set(reread) == set(original) - {"pos_embed"}
    assert all(torch.equal(reread[k], original[k]) for k in reread if k != "y_embedder.y_embedding")
    assert reread["y_embedder.y_embedding"].shape == (300, 32)


@pytest.mark.parametrize("name,variant", [
    ("PixArt-Sigma-XL-2-256x256.pth", "PixArt-Sigma-XL-2-256x256"),
    ("PixArt-Sigma-XL-2-512-MS.pth", "PixArt-Sigma-XL-2-512-MS"),
    ("PixArt-Sigma-XL-2-1024-MS.pth", "PixArt-Sigma-XL-2-1024-MS"),
    ("PixArt-Sigma-XL-2-2K-MS.pth", "PixArt-Sigma-XL-2-2K-MS"),
    ("PixArt-XL-2-1024-MS.pth", "PixArt-XL-2-1024-MS"),
    ("PixArt-XL-2-512x512.pth", "PixArt-XL-2-512x512"),
])
def test_variant_from_the_released_file_name(tmp_path, name, variant):
    path = tmp_path / name
    path.write_bytes(b"")  # only the name is read
    assert transformer_weights.transformer_config(str(path)) == preset(name) == PRESETS[variant]


def test_inspect_reads_both_sigma_layouts(sigma, capsys):
    """`pixart-jax inspect` on the Σ .pth (300-token y_embedding) and on its PixArtSigmaPipeline folder."""
    from pixart_jax.cli import main

    _, pipe, pth, _ = sigma
    assert main(["inspect", pth]) == 0
    out = capsys.readouterr().out
    assert "original layout, 47 tensors" in out and "(300, 32)" in out
    assert main(["inspect", pipe]) == 0
    assert "diffusers layout, 57 tensors" in capsys.readouterr().out
