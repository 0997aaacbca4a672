"""Parity of PixArtTransformer with diffusers' PixArtTransformer2DModel (random weights, real on-disk layouts)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402

from pixart_jax.models.transformer_config import MAX_TOKENS_KEY, PRESETS  # noqa: E402
from pixart_jax.testing.random_weights import redraw  # noqa: E402
from pixart_jax.weights import transformer as transformer_weights  # noqa: E402
from pixart_jax.weights.nnx_state import flat_arrays  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402
from tests.helpers.transformer_io import inputs, original_layout, run_ours, run_reference  # noqa: E402

TINY = dict(num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=8, num_layers=2,
            caption_channels=32, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            activation_fn="gelu-approximate", attention_bias=True, cross_attention_dim=48)
VARIANTS = {  # micro-conditioned (MS-like, interpolation scale 2) and plain (fixed-size 256/512-like)
    "ms": dict(sample_size=16, use_additional_conditions=True, interpolation_scale=2),
    "plain": dict(sample_size=16, use_additional_conditions=False),
}


def reference_model(seed, **config):
    model = diffusers.PixArtTransformer2DModel(**config)
    return redraw(model, seed).eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def saved(request, tmp_path_factory):
    ref = reference_model(1, **TINY, **VARIANTS[request.param])
    path = tmp_path_factory.mktemp(request.param) / "transformer"
    ref.save_pretrained(path, safe_serialization=True)
    return request.param, ref, path


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 8, 12), (3, 12, 6), (1, 4, 20)])
@pytest.mark.parametrize("use_mask", [True, False])
def test_tiny_parity(saved, shape, use_mask):
    variant, ref, path = saved
    micro = variant == "ms"
    ours = transformer_weights.load_transformer(str(path))
    x = inputs(*shape)
    expected = run_reference(ref, x, use_mask, micro)
    assert rel_error(run_ours(ours, x, use_mask, micro), expected) <= 1e-5


@pytest.fixture(scope="module")
def original_pth(tmp_path_factory):
    ref = reference_model(2, **TINY, **VARIANTS["ms"])
    y_embedding = torch.randn(8, 32, generator=torch.Generator().manual_seed(3)) / np.sqrt(32)
    path = tmp_path_factory.mktemp("orig") / "PixArt-tiny.pth"
    torch.save({"state_dict": original_layout(ref.state_dict(), y_embedding)}, path)
    config = transformer_weights.PixArtConfig.from_diffusers(dict(ref.config)).replace(max_tokens=8)
    return ref, str(path), config, y_embedding.numpy()


def test_original_pth_matches_diffusers(original_pth):
    ref, path, config, y_embedding = original_pth
    ours = transformer_weights.load_transformer(path, config=config)
    x = inputs(2, 8, 12)
    assert rel_error(run_ours(ours, x), run_reference(ref, x)) <= 1e-5
    np.testing.assert_array_equal(np.asarray(ours.y_embedding[...]), y_embedding)


def test_export_round_trips_bit_exact(original_pth, tmp_path):
    ref, path, config, _ = original_pth
    ours = transformer_weights.load_transformer(path, config=config)
    params = {k: np.asarray(v) for k, v in flat_arrays(ours).items()}
    transformer_weights.save_original(ours, str(tmp_path / "again.pth"))
    transformer_weights.save_original(ours, str(tmp_path / "again.safetensors"))
    transformer_weights.save_jax(ours, str(tmp_path / "jax"))
    for p in ("again.pth", "again.safetensors", "jax"):
        back = flat_arrays(transformer_weights.load_transformer(str(tmp_path / p), config=config))
        assert back.keys() == params.keys()
        for k in params:
            np.testing.assert_array_equal(np.asarray(back[k]), params[k], err_msg=f"{p}: {k}")
    reread = torch.load(tmp_path / "again.pth")["state_dict"]
    original = torch.load(path)["state_dict"]
    assert set(reread) == set(original) - {"pos_embed"}
    assert all(torch.equal(reread[k], original[k]) for k in reread)


def test_exported_diffusers_directory_loads_in_diffusers(original_pth, tmp_path):
    ref, path, config, _ = original_pth
    model = transformer_weights.load_transformer(path, config=config)
    transformer_weights.save_diffusers(model, str(tmp_path / "transformer"))
    reloaded = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    x = inputs(2, 16, 8)
    np.testing.assert_array_equal(run_reference(reloaded, x), run_reference(ref, x))


def test_bf16_compute_close_to_fp32(saved):
    _, _, path = saved
    x = inputs(2, 8, 12)
    micro = saved[0] == "ms"
    fp32 = run_ours(transformer_weights.load_transformer(str(path)), x, micro=micro)
    bf16_model = transformer_weights.load_transformer(str(path), dtype=jnp.bfloat16)
    assert bf16_model.t_block.kernel.dtype == jnp.float32  # parameters stay fp32
    assert rel_error(run_ours(bf16_model, x, micro=micro), fp32) <= 3e-2  # bf16 has an 8-bit mantissa


def full_size_parity(tmp_path, cfg, parameters, h, w, micro):
    """Relative error of ours vs diffusers at `cfg`'s full size (a diffusers folder of it loaded by ours), batch
    2 at an h x w latent, cfg.max_tokens caption tokens (the second row's mask cut at 20)."""
    config = cfg.to_diffusers()
    config.pop("_class_name")
    config.pop(MAX_TOKENS_KEY)
    ref = reference_model(4, **config)
    assert sum(p.numel() for p in ref.parameters()) == parameters
    ref.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    x = inputs(2, h, w, tokens=cfg.max_tokens, caption=4096)
    x["encoder_attention_mask"][1, 20:] = 0
    expected = run_reference(ref, x, micro=micro)
    del ref
    ours = transformer_weights.load_transformer(str(tmp_path / "transformer"))
    return rel_error(run_ours(ours, x, micro=micro), expected)


@pytest.mark.slow
def test_full_size_xl2_1024_ms_parity(tmp_path):
    """The real PixArt-XL-2-1024-MS size (611M parameters) at a 256x256 image (32x32 latent), batch 2."""
    err = full_size_parity(tmp_path, PRESETS["PixArt-XL-2-1024-MS"], 611_349_152, 32, 32, micro=True)
    print(f"XL/2-1024-MS rel error {err:.2e}")
    assert err <= 1e-5


@pytest.mark.slow
def test_full_size_sigma_xl2_2k_parity(tmp_path):
    """The real PixArt-Sigma-XL-2-2K-MS (no micro-conditions, position interpolation 4 on a 128-patch base, 300
    caption tokens) at a small non-square 192x320 image (24x40 latent): a 2K bucket's attention does not fit here."""
    err = full_size_parity(tmp_path, PRESETS["PixArt-Sigma-XL-2-2K-MS"], 610_856_096, 24, 40, micro=False)
    print(f"Sigma XL/2-2K-MS rel error {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("h,w,b,s", [(16, 16, 16, 1.0), (32, 32, 32, 1.0), (64, 64, 64, 2.0), (32, 128, 64, 2.0)])
def test_pos_embed_matches_diffusers(h, w, b, s):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    from pixart_jax.models.embeddings import sincos_pos_embed

    ref = get_2d_sincos_pos_embed(1152, (h, w), interpolation_scale=s, base_size=b).numpy()
    np.testing.assert_allclose(sincos_pos_embed(1152, h, w, b, s), ref, atol=1e-6)


def test_timestep_and_size_embeddings_match_diffusers(saved):
    variant, ref, path = saved
    if variant != "ms":
        pytest.skip("size embedders exist only in micro-conditioned models")
    ours = transformer_weights.load_transformer(str(path))
    t = np.array([0.0, 1.0, 499.5, 999.0, 250.0, 3.0, 700.0, 999.0, 0.0], np.float32)
    hw = np.array([[h, w] for h in (512, 1024, 2048) for w in (512, 1024, 2048)], np.float32)
    ar = np.array([[a] for a in (0.25, 1.0, 4.0) * 3], np.float32)
    with torch.no_grad():
        expected = ref.adaln_single.emb(torch.from_numpy(t), torch.from_numpy(hw), torch.from_numpy(ar),
                                        batch_size=9, hidden_dtype=torch.float32).numpy()
    assert rel_error(ours.condition(t, hw, ar), expected) <= 1e-5
