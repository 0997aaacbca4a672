"""Initialisation as spec §1.15: zero-inits, N(0, 0.02) embedders, Xavier linears, PyTorch-default patch bias."""
import numpy as np
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PixArtConfig
from pixart_jax.weights.nnx_state import flat_arrays

CFG = PixArtConfig(depth=2, hidden_size=192, num_heads=4, caption_channels=256, sample_size=32)


def test_initialisation_follows_the_reference():
    p = {k: np.asarray(v) for k, v in flat_arrays(PixArtTransformer(CFG, rngs=nnx.Rngs(0))).items()}
    d = CFG.hidden_size
    for zero in ("blocks.cross_attn.proj.kernel", "blocks.cross_attn.proj.bias", "final_layer.linear.kernel",
                 "final_layer.linear.bias"):
        assert not p[zero].any(), zero
    for normal in ("t_embedder.fc1.kernel", "t_embedder.fc2.kernel", "t_block.kernel", "csize_embedder.fc1.kernel",
                   "ar_embedder.fc2.kernel", "y_proj.fc1.kernel", "y_proj.fc2.kernel"):
        assert abs(p[normal].std() - 0.02) < 0.002, normal
    for table in ("blocks.scale_shift_table", "final_layer.scale_shift_table"):
        assert abs(p[table].std() - 1 / np.sqrt(d)) < 0.1 / np.sqrt(d), table
    assert abs(p["y_embedding"].std() - 1 / np.sqrt(CFG.caption_channels)) < 0.05 / np.sqrt(CFG.caption_channels)
    for name, fan_in, fan_out in (("blocks.attn.qkv.kernel", d, 3 * d), ("blocks.mlp.fc1.kernel", d, 4 * d),
                                  ("x_embedder.kernel", 16, d)):
        bound = np.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform (the patch conv viewed as (d, 16))
        assert np.abs(p[name]).max() <= bound and np.abs(p[name]).max() > 0.95 * bound, name
    for bias in ("blocks.attn.qkv.bias", "blocks.mlp.fc2.bias", "t_block.bias", "y_proj.fc1.bias"):
        assert not p[bias].any(), bias
    patch_bias = p["x_embedder.bias"]  # PyTorch's Conv2d default, not zeroed: U(-1/4, 1/4) for fan-in 16
    assert np.abs(patch_bias).max() <= 0.25 and patch_bias.std() > 0.1
    assert not np.array_equal(p["blocks.attn.qkv.kernel"][0], p["blocks.attn.qkv.kernel"][1])  # blocks differ


def test_same_seed_same_parameters():
    a, b = (flat_arrays(PixArtTransformer(CFG, rngs=nnx.Rngs(3))) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
