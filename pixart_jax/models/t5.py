"""T5 v1.1 text encoder (Raffel et al. 2020, arXiv 1910.10683; transformers `T5EncoderModel`) in Flax NNX,
configured and loaded from a Hugging Face `text_encoder/` folder.

Architecture: token embedding, `num_layers` pre-norm blocks (self-attention without 1/sqrt(d) scaling plus a
relative position bias; gated-GELU or ReLU feed-forward), final RMS norm; no biases anywhere. The position bias
comes from one table owned by the first block and is added in every block. RMS norms and softmax run in fp32.
Compute runs in fp32 or bf16 (fp16 overflows in T5's feed-forward, so it is refused); weights may be int8.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from pixart_jax.models.attention import attention
from pixart_jax.models.int8 import Int8Linear

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of a Hugging Face T5 `config.json` the encoder uses (defaults are transformers' defaults)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"

    @property
    def gated(self):
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation_name(self):
        # transformers runs "gated-gelu" with the tanh approximation of GELU (its "gelu_new").
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]



def relative_position_buckets(length, num_buckets, max_distance):
    """(length, length) bucket of key position minus query position, bidirectional (the encoder's scheme).

    Half the buckets per direction; of those, half are exact offsets and half log-spaced up to max_distance.
    Computed in float32 like the reference so that offsets on a bucket boundary land in the same bucket.
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(relative)
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(exact)
    log_bucket = np.log(ratio) / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    far = np.minimum(exact + log_bucket.astype(np.int64), half - 1)
    return np.where(relative > 0, half, 0) + np.where(distance < exact, distance, far)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, without mean subtraction or bias, in fp32."""

    def __init__(self, dim, eps, *, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def _linear(din, dout, dtype, param_dtype, int8, rngs):
    if int8:
        return Int8Linear(din, dout, dtype=dtype)
    return nnx.Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    def __init__(self, cfg, dtype, param_dtype, int8, *, rngs):
        inner = cfg.num_heads * cfg.d_kv
        self.heads, self.head_dim = cfg.num_heads, cfg.d_kv
        self.q = _linear(cfg.d_model, inner, dtype, param_dtype, int8, rngs)
        self.k = _linear(cfg.d_model, inner, dtype, param_dtype, int8, rngs)
        self.v = _linear(cfg.d_model, inner, dtype, param_dtype, int8, rngs)
        self.o = _linear(inner, cfg.d_model, dtype, param_dtype, int8, rngs)

    def __call__(self, x, position_bias, mask):
        q, k, v = (rearrange(proj(x), "b n (h d) -> b n h d", h=self.heads) for proj in (self.q, self.k, self.v))
        # T5 folds the 1/sqrt(d) scaling into its initialisation: the logits are unscaled.
        out = attention(q, k, v, mask=mask, bias=position_bias, scale=1.0)
        return self.o(rearrange(out, "b n h d -> b n (h d)"))


class FeedForward(nnx.Module):
    """wo(act(wi_0 x) * wi_1 x) when gated (v1.1), else wo(act(wi x))."""

    def __init__(self, cfg, dtype, param_dtype, int8, *, rngs):
        self.act = ACTIVATIONS[cfg.activation_name]
        if cfg.gated:
            self.wi_0 = _linear(cfg.d_model, cfg.d_ff, dtype, param_dtype, int8, rngs)
            self.wi_1 = _linear(cfg.d_model, cfg.d_ff, dtype, param_dtype, int8, rngs)
        else:
            self.wi = _linear(cfg.d_model, cfg.d_ff, dtype, param_dtype, int8, rngs)
        self.wo = _linear(cfg.d_ff, cfg.d_model, dtype, param_dtype, int8, rngs)

    def __call__(self, x):
        if hasattr(self, "wi"):
            return self.wo(self.act(self.wi(x)))
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5Block(nnx.Module):
    def __init__(self, cfg, dtype, param_dtype, int8, *, rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.attn = SelfAttention(cfg, dtype, param_dtype, int8, rngs=rngs)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.ff = FeedForward(cfg, dtype, param_dtype, int8, rngs=rngs)

    def __call__(self, x, position_bias, mask):
        x = x + self.attn(self.attn_norm(x), position_bias, mask)
        return x + self.ff(self.ff_norm(x))


def check_compute_dtype(dtype):
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float16:
        raise ValueError("T5 overflows in float16 (it was trained in bfloat16): use jnp.bfloat16 or jnp.float32")
    if dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"unsupported T5 compute dtype {dtype}: use jnp.float32 or jnp.bfloat16")
    return dtype


class T5Encoder(nnx.Module):
    """The T5 encoder stack: `model(input_ids, attention_mask) -> last_hidden_state (B, L, d_model)`.

    dtype: compute dtype (float32 or bfloat16); param_dtype: storage dtype of the float weights; int8: the
    linears store int8 weights with per-output-channel scales (see pixart_jax.models.int8).
    """

    def __init__(self, cfg: T5Config, dtype=jnp.float32, param_dtype=jnp.float32, int8=False, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = check_compute_dtype(dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.relative_attention_bias = nnx.Embed(cfg.relative_attention_num_buckets, cfg.num_heads,
                                                 param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([T5Block(cfg, dtype, param_dtype, int8, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)

    def position_bias(self, length):
        """(1, heads, length, length) fp32 bias shared by all blocks."""
        buckets = relative_position_buckets(length, self.cfg.relative_attention_num_buckets,
                                            self.cfg.relative_attention_max_distance)
        table = self.relative_attention_bias.embedding[...].astype(jnp.float32)
        return rearrange(table[buckets], "q k h -> 1 h q k")

    def __call__(self, input_ids, attention_mask=None):
        precision = "highest" if self.dtype == jnp.float32 else "default"
        with jax.default_matmul_precision(precision):
            x = self.embed(input_ids).astype(self.dtype)
            bias = self.position_bias(input_ids.shape[1])
            # Padded keys are masked out; padded queries still produce outputs, as in the reference.
            mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
            for block in self.blocks:
                x = block(x, bias, mask)
            return self.final_norm(x)
