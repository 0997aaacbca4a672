"""Attention kernels: each one against XLA's on CPU where it runs here (Pallas splash in interpret mode), the choice
by platform, and the transformer with a forced kernel. cuDNN needs an NVIDIA GPU: only its selection is tested."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixart_jax import sharding
from pixart_jax.choices import AttentionKernel
from pixart_jax.models.attention import attention, select_kernel
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.testing.random_weights import redraw_nnx


def rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def qkv(shape, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))


@pytest.mark.parametrize("shape", [(2, 256, 2, 64), (1, 128, 3, 24), (2, 200, 2, 32)])  # 200: padded, segments
def test_splash_matches_xla_forward_and_backward(shape):
    q, k, v = qkv(shape)
    loss = lambda kernel: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, kernel=kernel)))  # noqa: E731
    assert rel(attention(q, k, v, kernel="splash"), attention(q, k, v, kernel="xla")) < 1e-5
    for ours, ref in zip(jax.grad(loss("splash"), (0, 1, 2))(q, k, v), jax.grad(loss("xla"), (0, 1, 2))(q, k, v)):
        assert rel(ours, ref) < 1e-5


def test_splash_runs_batch_parallel_on_a_mesh():
    """Under a ("data", "fsdp") mesh the Pallas kernel runs per device on its rows of the batch (shard_map)."""
    q, k, v = qkv((8, 128, 2, 32), seed=1)
    mesh = sharding.make_mesh(4, 2)
    with jax.set_mesh(mesh):
        placed = [jax.device_put(a, sharding.batch_sharding(mesh)) for a in (q, k, v)]
        out = jax.jit(lambda q, k, v: attention(q, k, v, kernel="splash"))(*placed)
    assert out.sharding.spec == sharding.batch_sharding(mesh).spec
    assert rel(out, attention(q, k, v, kernel="xla")) < 1e-5


def test_kernel_choice_by_platform():
    q32 = jax.ShapeDtypeStruct((2, 4096, 16, 72), jnp.float32)
    q16 = jax.ShapeDtypeStruct((2, 4096, 16, 72), jnp.bfloat16)
    captions = jax.ShapeDtypeStruct((2, 120, 16, 72), jnp.bfloat16)
    mask = jnp.ones((2, 1, 1, 120), bool)
    assert select_kernel("cpu", q16, q16) is AttentionKernel.xla
    assert select_kernel("tpu", q16, q16) is AttentionKernel.splash
    assert select_kernel("tpu", q16, captions, mask) is AttentionKernel.xla        # masked cross-attention
    untiled = jax.ShapeDtypeStruct((2, 4032, 16, 72), jnp.bfloat16)  # a 576x1792 bucket: padded to 4096
    assert select_kernel("tpu", untiled, untiled) is AttentionKernel.splash
    assert select_kernel("gpu", q16, q16) is AttentionKernel.cudnn
    assert select_kernel("gpu", q32, q32) is AttentionKernel.xla                    # cuDNN: bf16/fp16 only
    with pytest.raises(ValueError, match="splash attention kernel takes no mask"):
        attention(*qkv((1, 128, 1, 8)), mask=jnp.ones((1, 1, 1, 128), bool), kernel="splash")


def test_transformer_with_the_splash_kernel_matches_xla():
    """A tiny PixArt at 32x32 latents (256 image tokens: tiles into splash blocks) with its self-attention kernel
    forced to splash gives XLA's output (the masked cross-attention stays with XLA)."""
    cfg = PRESETS["tiny"]
    model = redraw_nnx(PixArtTransformer(cfg, rngs=nnx.Rngs(0)), 0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4, 32, 32)), jnp.float32)
    caption = jnp.asarray(rng.standard_normal((2, cfg.max_tokens, cfg.caption_channels)), jnp.float32)
    mask = jnp.asarray(np.arange(cfg.max_tokens)[None] < np.array([[7], [30]]), jnp.int32)
    micro = dict(resolution=jnp.full((2, 2), 256.0), aspect_ratio=jnp.ones((2, 1)))
    outs = {}
    for kernel in ("xla", "auto", "splash"):
        model.attention_kernel = kernel
        outs[kernel] = model(x, jnp.array([10.0, 500.0]), caption, mask, **micro)
    assert rel(outs["auto"], outs["xla"]) == 0  # auto is XLA on CPU
    assert rel(outs["splash"], outs["xla"]) < 1e-5
