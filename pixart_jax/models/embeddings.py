"""Fixed embeddings and token layout of the PixArt DiT (PixArt-alpha `diffusion/model/nets/PixArt_blocks.py`,
`PixArt.py` `get_2d_sincos_pos_embed`; diffusers `models/embeddings.py`)."""
import jax.numpy as jnp
import numpy as np
from einops import rearrange


def sincos_1d(positions, dim):
    """[sin(q*w_k)..., cos(q*w_k)...] with w_k = 10000^(-k/(dim/2)), in float64."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed(dim, h, w, base_size, scale):
    """(h*w, dim) position embedding of a token grid, row-major tokens.

    Coordinates span [0, base_size/scale) whatever the grid size ("interpolation"); the first dim/2 channels
    encode the column (x) coordinate, the last dim/2 the row (y) coordinate.
    """
    rows = np.arange(h, dtype=np.float64) / (h / base_size) / scale
    cols = np.arange(w, dtype=np.float64) / (w / base_size) / scale
    col_grid, row_grid = np.meshgrid(cols, rows)
    return np.concatenate([sincos_1d(col_grid, dim // 2), sincos_1d(row_grid, dim // 2)], axis=1)


def timestep_features(t, dim=256, max_period=10000.0):
    """(B,) timesteps (integer or fractional) -> (B, dim) float32 features, cosine half first."""
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def patchify(x, p):
    """(B, C, H, W) latents -> (B, h*w, p, p, C) patches in row-major token order."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) p q c", p=p, q=p)


def unpatchify(tokens, h, w, p, c):
    """(B, h*w, p*p*c) with (row-in-patch, col-in-patch, channel) order -> (B, c, h*p, w*p)."""
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p, c=c)
