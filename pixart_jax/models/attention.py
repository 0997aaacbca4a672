"""The one attention function every model in pixart_jax calls, and the choice of kernel by platform.

`AttentionKernel.auto` picks, for the platform the computation is compiled for (the mesh's, else the default
backend): XLA everywhere it has no better choice; cuDNN's fused flash attention on GPU for unmasked bf16/fp16
attention it supports; Pallas splash attention on TPU for unmasked attention (PixArt's self-attention: it never
materialises the (tokens x tokens) scores, 2 GiB per 2 x 16 heads at 1024 px). Splash needs lengths in whole
blocks of 128: other lengths (most aspect-ratio buckets) are padded, the padding kept apart by segment ids.
Masked attention (PixArt's cross-attention over 120 caption tokens: a small score matrix) stays with XLA. Splash
on another platform runs in Pallas interpret mode (slow; for parity tests on CPU).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pixart_jax.choices import AttentionKernel
from pixart_jax.sharding import MESH_AXES

SPLASH_BLOCKS = (512, 256, 128)   # splash block sizes tried, largest first; lengths are padded to the smallest
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def target_platform():
    """The platform the enclosing computation compiles for: the current mesh's, else the default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device  # None without a mesh
    return device.platform if device is not None else jax.default_backend()


def select_kernel(platform, q, k, mask=None, bias=None):
    """The kernel `auto` runs for (B, T, heads, head_dim) q and k on `platform` ("cpu", "gpu"/"cuda", "tpu")."""
    unmasked = mask is None and bias is None
    if platform == "tpu" and unmasked:
        return AttentionKernel.splash
    if platform in ("gpu", "cuda") and unmasked and q.dtype in CUDNN_DTYPES and q.shape[-1] % 8 == 0 \
            and q.shape[-1] <= 128:
        return AttentionKernel.cudnn
    return AttentionKernel.xla


def splash_block(q_len, kv_len):
    """The largest splash block size both sequence lengths are multiples of (0: none)."""
    return next((b for b in SPLASH_BLOCKS if q_len % b == 0 and kv_len % b == 0), 0)


def attention(q, k, v, mask=None, bias=None, scale=None, kernel=AttentionKernel.auto):
    """Multi-head attention over (B, T, heads, head_dim) tensors; `mask` is boolean, broadcastable to
    (B, heads, T, S), True = attend. Softmax runs in fp32 whatever the kernel. `kernel` (an AttentionKernel)
    forces one; `auto` chooses by platform (module docstring)."""
    kernel = AttentionKernel(kernel)
    if kernel is AttentionKernel.auto:
        kernel = select_kernel(target_platform(), q, k, mask, bias)
    if kernel is AttentionKernel.splash:
        if mask is not None or bias is not None:
            raise ValueError("the splash attention kernel takes no mask or bias (use kernel='xla' or 'auto')")
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        return _batch_parallel(functools.partial(_splash, interpret=target_platform() != "tpu"),
                               (q * jnp.asarray(scale, q.dtype)).astype(q.dtype), k, v)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=(
        "cudnn" if kernel is AttentionKernel.cudnn else "xla"))


def _batch_parallel(fn, *arrays):
    """fn over arrays split along the batch by the current mesh's ("data", "fsdp") axes: a Pallas kernel is
    opaque to the SPMD partitioner, so each device runs it on its own rows (shard_map)."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in MESH_AXES if not mesh.empty and a in mesh.axis_names)
    if not axes or arrays[0].shape[0] % math.prod(mesh.shape[a] for a in axes):
        return fn(*arrays)
    spec = P(axes)
    return jax.shard_map(fn, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)(*arrays)


def _splash(q, k, v, interpret):
    """Pallas TPU splash attention of (B, T, heads, D) q (already scaled), k, v without a mask. Lengths that are
    not whole blocks are padded; padded keys get another segment id, so no real query attends to them."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    t, heads, s = q.shape[1], q.shape[2], k.shape[1]
    unit = SPLASH_BLOCKS[-1]
    tp, sp = -(-t // unit) * unit, -(-s // unit) * unit
    pad = lambda a, n: jnp.pad(a, ((0, 0), (0, n - a.shape[1]), (0, 0), (0, 0))).swapaxes(1, 2)  # noqa: E731
    b = splash_block(tp, sp)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    run = splash.make_splash_mha(masks.MultiHeadMask([masks.FullMask((tp, sp))] * heads), block_sizes=sizes,
                                 head_shards=1, q_seq_shards=1, interpret=interpret)
    ids = None
    if (tp, sp) != (t, s):  # segment 1: real tokens; 0: padding (padded queries attend padded keys only)
        ids = splash.SegmentIds(q=(jnp.arange(tp) < t).astype(jnp.int32), kv=(jnp.arange(sp) < s).astype(jnp.int32))
    out = jax.vmap(lambda q, k, v: run(q, k, v, segment_ids=ids))(pad(q, tp), pad(k, sp), pad(v, sp))
    return out.swapaxes(1, 2)[:, :t]  # (B, T, H, D)
