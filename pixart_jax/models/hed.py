"""The HED edge network of ControlNet ("ControlNetHED_Apache2", weights `ControlNetHED.pth`; spec §5.3) in Flax NNX.

RGB in [0, 255] minus a learned per-channel offset `norm`; five stages of 3×3 convolutions (padding 1) + ReLU with
(convolutions, channels) = (2, 64), (2, 128), (3, 256), (3, 512), (3, 512), stages 2-5 starting with a 2×2 max-pool
(stride 2); each stage's 1×1 projection to one channel is a side map. The side maps, resized (bilinear) to the
input size and averaged, are the edge logits; the edge map is their sigmoid.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.images import resize_bilinear

STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))  # (convolutions, channels) per stage
CONV_AXES = (None, None, "kernel_in", "kernel_out")


def _conv(din, dout, kernel, dtype, rngs):
    return nnx.Conv(din, dout, (kernel, kernel), padding=kernel // 2, dtype=dtype, param_dtype=jnp.float32,
                    kernel_metadata={"axes": CONV_AXES}, rngs=rngs)


class HEDStage(nnx.Module):
    """[max-pool] -> (3×3 conv, ReLU) × n; returns the features and their 1×1 projection (the side map)."""

    def __init__(self, din, dout, convs, pool, dtype, *, rngs):
        self.pool = pool
        self.convs = nnx.List([_conv(din if j == 0 else dout, dout, 3, dtype, rngs) for j in range(convs)])
        self.projection = _conv(dout, 1, 1, dtype, rngs)

    def __call__(self, x):
        if self.pool:
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return x, self.projection(x)


class HED(nnx.Module):
    """`logits(images)` and `__call__(images)`: (B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) edge logits / edge map
    in [0, 1]."""

    def __init__(self, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm = nnx.Param(jnp.zeros((1, 3, 1, 1), jnp.float32), axes=(None, None, None, None))
        channels = [3] + [c for _, c in STAGES]
        self.blocks = nnx.List([HEDStage(channels[i], c, n, i > 0, dtype, rngs=rngs) for i, (n, c) in
                                enumerate(STAGES)])

    def logits(self, images):
        b, _, h, w = images.shape
        with jax.default_matmul_precision("highest" if jnp.dtype(self.dtype) == jnp.float32 else "default"):
            x = jnp.transpose(images * 255.0 - self.norm[...], (0, 2, 3, 1)).astype(self.dtype)  # (B, H, W, 3)
            sides = []
            for block in self.blocks:
                x, side = block(x)                                                             # (B, h_k, w_k, 1)
                sides.append(resize_bilinear(jnp.transpose(side, (0, 3, 1, 2)).astype(jnp.float32), h, w))
        return jnp.mean(jnp.stack(sides), axis=0)                                              # (B, 1, H, W)

    def __call__(self, images):
        return jnp.clip(jax.nn.sigmoid(self.logits(images)), 0.0, 1.0)
