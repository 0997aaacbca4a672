"""The PixArt-δ ControlNet-Transformer in Flax NNX (spec §5.1): a frozen base PixArtTransformer, trainable copies of
its first N blocks and zero-initialised linears that feed the copies' outputs into the base's residual stream.

    x = Block_0(x)
    c = x + before_proj(c_tok)                         (copy 0 only)
    for k = 1 .. N:  c = Copy_{k-1}(c);  x = Block_k(x + after_proj_{k-1}(c))
    for k = N+1 .. depth-1:  x = Block_k(x)

c_tok are the control latents through the base's own patch embedder plus the sin-cos table of their grid; every copy
sees the base's t0, captions and mask. Blocks 1..N and the copies run in one jax.lax.scan (a base block, a copy and
a zero linear per step), the other blocks in the base's scans. The fixed-size class (`ControlPixArtHalf`, around a
PixArt without micro-conditions, e.g. the 512 px ControlNet) adds the stored position table of the base checkpoint
(`base_model.pos_embed`) to the image tokens at the native grid, the control tokens getting a freshly computed one.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.models.embeddings import sincos_pos_embed
from pixart_jax.models.transformer import Buffer, Dense, PixArtTransformer, scan_layers, stacked, zeros
from pixart_jax.models.transformer_config import PRESETS, PixArtConfig

RELEASED_COPIES = 13


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    """The base transformer's architecture and how many of its first blocks are copied (13 in the released
    models; at most depth - 1)."""
    base: PixArtConfig
    copies: int = RELEASED_COPIES

    def __post_init__(self):
        if not 1 <= self.copies < self.base.depth:
            raise ValueError(f"a ControlNet copies 1 to depth - 1 = {self.base.depth - 1} base blocks, got "
                             f"copies={self.copies}")

    @property
    def stored_pos_table(self):
        """The fixed-size class (ControlPixArtHalf: a base without micro-conditions) keeps the base checkpoint's
        position table; the multi-scale class (ControlPixArtMSHalf) recomputes it every forward."""
        return not self.base.micro_conditions

    def to_dict(self):
        return {"base": self.base.to_dict(), "copies": self.copies}

    @classmethod
    def from_dict(cls, d):
        return cls(PixArtConfig.from_dict(d["base"]), int(d["copies"]))


PRESETS_CONTROLNET = {
    "PixArt-XL-2-1024-ControlNet": ControlNetConfig(PRESETS["PixArt-XL-2-1024-MS"]),
    "PixArt-XL-2-512-ControlNet": ControlNetConfig(PRESETS["PixArt-XL-2-512x512"]),
}


def native_pos_table(cfg: PixArtConfig):
    """(1, base_size², D) float32: the table the reference stores as `pos_embed` (its native square grid)."""
    b = cfg.base_size
    return sincos_pos_embed(cfg.hidden_size, b, b, b, cfg.interpolation_scale).astype(np.float32)[None]


class PixArtControlNet(nnx.Module):
    """`PixArtControlNet(base, copies)`: copies of base blocks 0..copies-1 and zero linears, so that a new ControlNet
    computes exactly what `base` does. Called like the base (diffusers' tensors, see PixArtTransformer) plus
    `control` (B, C, H, W): the control image's latents, already scaled like `latents`; control=None is the base
    model. `cfg`, `dtype` and `y_embedding` are the base's (the pipeline and training read them)."""

    def __init__(self, base: PixArtTransformer, copies: int = RELEASED_COPIES):
        d = base.cfg.hidden_size
        config = ControlNetConfig(base.cfg, copies)
        self.base, self.num_copies = base, copies
        block_def, blocks = nnx.split(base.blocks)
        self.copies = nnx.merge(block_def, jax.tree.map(lambda a: jnp.array(a[:copies]), blocks))
        rngs = nnx.Rngs(0)  # zero initialisers: the key is never used
        self.before_proj = Dense(d, d, base.dtype, zeros, rngs=rngs)
        self.after_proj = stacked(lambda r: Dense(d, d, base.dtype, zeros, rngs=r), copies, jax.random.key(0))
        self.pos_embed = Buffer(jnp.asarray(native_pos_table(base.cfg))) if config.stored_pos_table else None

    @property
    def cfg(self) -> PixArtConfig:
        return self.base.cfg

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def y_embedding(self):
        return self.base.y_embedding

    @property
    def config(self) -> ControlNetConfig:
        return ControlNetConfig(self.base.cfg, self.num_copies)

    def _image_pos_table(self, latents):
        """The stored table at the native grid (fixed-size class); None (the formula) otherwise."""
        p, b = self.cfg.patch_size, self.cfg.base_size
        if self.pos_embed is None or tuple(latents.shape[2:]) != (b * p, b * p):
            return None
        return self.pos_embed[...][0]

    def _branch(self, x, c, inputs):
        """Base blocks 1..N, each fed copy k-1's output through its zero linear, in one scan over (k, copy, zero
        linear); the frozen base block is read in place by index. Returns x."""
        copy_def, copies = nnx.split(self.copies)
        proj_def, projs = nnx.split(self.after_proj)

        def step(carry, layer):
            x, c = carry
            k, copy, proj = layer
            c = nnx.merge(copy_def, copy)(c, *inputs)                                 # (B, N, D) copy k-1
            x = self.base.block(k)(x + nnx.merge(proj_def, proj)(c), *inputs)         # (B, N, D) base block k
            return (x, c), None

        layers = (jnp.arange(1, self.num_copies + 1), copies, projs)
        return scan_layers(step, (x, c), layers, self.base.remat)[0][0]

    def __call__(self, latents, timestep, encoder_hidden_states, encoder_attention_mask=None, resolution=None,
                 aspect_ratio=None, control=None):
        base = self.base
        if control is not None and tuple(control.shape) != tuple(latents.shape):
            raise ValueError(f"control latents must have the shape of the latents {tuple(latents.shape)}, got "
                             f"{tuple(control.shape)}")
        with base.precision():
            x, grid = base.tokens(latents, self._image_pos_table(latents))                # (B, N, D)
            t, inputs = base.conditioning(latents.shape[0], timestep, encoder_hidden_states,
                                          encoder_attention_mask, resolution, aspect_ratio)  # (B, D)
            if control is None:
                x = base.run_blocks(x, inputs)                                               # (B, N, D)
            else:
                c, _ = base.tokens(control)                                                  # (B, N, D) control tokens
                x = base.run_blocks(x, inputs, 0, 1)                                         # (B, N, D) base block 0
                x = self._branch(x, x + self.before_proj(c), inputs)                         # (B, N, D) blocks 1..N
                x = base.run_blocks(x, inputs, self.num_copies + 1)                          # (B, N, D)
            return base.output(x, t, grid)                                                   # (B, 8, H, W)
