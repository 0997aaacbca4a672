"""PCM's latent discriminator (consistency.md §2.6): the frozen teacher as feature extractor and one light head per
transformer block.

Every block's output tokens (B, h·w, D) are put back on the token grid (B, h, w, D) and scored per location by a head:
1×1 conv D->D, GroupNorm, LeakyReLU; then the same again with a residual connection; then a 1×1 conv D->1. A 1×1
convolution is a linear map of each token, so the heads are Dense layers applied on the grid. GroupNorm uses 32
groups as the reference (PixArt-XL: D = 1152), or the largest divisor of D below that for small models; LeakyReLU has
PyTorch's default slope 0.01. The heads are stacked over blocks (a leading "layers" axis, like the transformer's)
and run in one vmap.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.transformer import Dense
from pixart_jax.sharding import stack_axes

GROUPS = 32
LEAKY_SLOPE = 0.01


class NormAct(nnx.Module):
    """GroupNorm (scale and bias per channel) then LeakyReLU, in float32."""

    def __init__(self, width, *, rngs):
        self.norm = nnx.GroupNorm(width, num_groups=math.gcd(GROUPS, width), param_dtype=jnp.float32,
                                  scale_metadata={"axes": ("kernel_out",)}, bias_metadata={"axes": ("kernel_out",)},
                                  rngs=rngs)

    def __call__(self, x):
        return jax.nn.leaky_relu(self.norm(x.astype(jnp.float32)), LEAKY_SLOPE)


class DiscriminatorHead(nnx.Module):
    """One head: (B, h, w, D) features -> (B, h, w, 1) logits."""

    def __init__(self, width, dtype=jnp.float32, *, rngs):
        self.conv_in = Dense(width, width, dtype, rngs=rngs)
        self.act_in = NormAct(width, rngs=rngs)
        self.conv_mid = Dense(width, width, dtype, rngs=rngs)
        self.act_mid = NormAct(width, rngs=rngs)
        self.conv_out = Dense(width, 1, dtype, rngs=rngs)

    def __call__(self, features):
        x = self.act_in(self.conv_in(features))                  # (B, h, w, D)
        x = x + self.act_mid(self.conv_mid(x))                   # (B, h, w, D)
        return self.conv_out(x).astype(jnp.float32)              # (B, h, w, 1)


class DiscriminatorHeads(nnx.Module):
    """`depth` heads of width D, stacked; called on the teacher's block outputs (depth, B, h·w, D) and the token
    grid (h, w), returns the logits (depth, B, h, w, 1)."""

    def __init__(self, depth, width, dtype=jnp.float32, *, rngs):
        keys = jax.random.split(rngs.params(), depth)
        head_def = nnx.graphdef(nnx.eval_shape(lambda: DiscriminatorHead(width, dtype, rngs=nnx.Rngs(0))))
        self.heads = nnx.merge(head_def, jax.vmap(
            lambda k: nnx.split(DiscriminatorHead(width, dtype, rngs=nnx.Rngs(k)))[1])(keys))
        stack_axes(self.heads)

    def __call__(self, features, grid):
        depth, batch, _, width = features.shape
        maps = features.reshape(depth, batch, *grid, width)      # (depth, B, h, w, D)
        head_def, head_state = nnx.split(self.heads)
        return jax.vmap(lambda state, x: nnx.merge(head_def, state)(x))(head_state, maps)
