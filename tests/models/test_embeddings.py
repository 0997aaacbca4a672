"""Position/timestep embeddings and the patch layout against the spec's formulas (§1.3-1.5, §1.13)."""
import math

import jax
import numpy as np
import pytest

from pixart_jax.models.embeddings import patchify, sincos_pos_embed, timestep_features, unpatchify


def pos_embed_by_formula(dim, h, w, b, s):
    """Spec §1.4.1 token by token: first half encodes the column coordinate, second half the row; sin then cos."""
    quarter = dim // 4
    omega = [1 / 10000 ** (k / quarter) for k in range(quarter)]
    out = np.zeros((h * w, dim))
    for i in range(h):
        for j in range(w):
            r, c = i / (h / b) / s, j / (w / b) / s
            out[i * w + j] = ([math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega]
                              + [math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega])
    return out


@pytest.mark.parametrize("h,w,b,s", [(16, 16, 16, 1.0), (32, 32, 32, 1.0), (64, 64, 64, 2.0), (32, 128, 64, 2.0)])
def test_pos_embed_matches_formula(h, w, b, s):
    dim = 1152
    ours = sincos_pos_embed(dim, h, w, b, s)
    expected = pos_embed_by_formula(dim, h, w, b, s)
    np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_pos_embed_range_does_not_depend_on_grid_size():
    """Changing the grid changes the spacing, not the range: a 8x8 grid samples every other point of 16x16."""
    coarse = sincos_pos_embed(64, 8, 8, 16, 1.0).reshape(8, 8, 64)
    fine = sincos_pos_embed(64, 16, 16, 16, 1.0).reshape(16, 16, 64)
    np.testing.assert_allclose(coarse, fine[::2, ::2], atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 1.0, 499.5, 999.0])
def test_timestep_features_match_formula(t):
    ours = np.asarray(timestep_features(np.array([t]), 256))[0]
    freqs = [math.exp(-math.log(10000) * k / 128) for k in range(128)]
    expected = [math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs]
    np.testing.assert_allclose(ours, expected, atol=1e-4)  # fp32 angles up to 999: rounding ~ 999 * 6e-8


def test_patchify_equals_stride_p_conv():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 10)).astype(np.float32)
    kernel = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)  # (kh, kw, in, out)
    ours = np.einsum("bnijc,ijcd->bnd", np.asarray(patchify(x, 2)), kernel)
    conv = jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NCHW", "HWIO", "NHWC"))
    np.testing.assert_allclose(ours, np.asarray(conv).reshape(2, 15, 5), rtol=1e-5, atol=1e-5)


def test_unpatchify_layout():
    """out[b, c, i*p + r, j*p + s] = tokens[b, i*w + j, (r*p + s)*C + c] (spec §1.13)."""
    b, h, w, p, c = 2, 3, 5, 2, 8
    tokens = np.arange(b * h * w * p * p * c, dtype=np.float32).reshape(b, h * w, p * p * c)
    ours = np.asarray(unpatchify(tokens, h, w, p, c))
    expected = np.zeros((b, c, h * p, w * p), np.float32)
    for i in range(h):
        for j in range(w):
            for r in range(p):
                for s in range(p):
                    expected[:, :, i * p + r, j * p + s] = tokens[:, i * w + j, (r * p + s) * c:(r * p + s + 1) * c]
    np.testing.assert_array_equal(ours, expected)


def test_patchify_unpatchify_round_trip():
    x = np.random.default_rng(1).standard_normal((2, 8, 6, 4)).astype(np.float32)
    tokens = np.asarray(patchify(x, 2)).reshape(2, 6, -1)
    np.testing.assert_array_equal(np.asarray(unpatchify(tokens, 3, 2, 2, 8)), x)
