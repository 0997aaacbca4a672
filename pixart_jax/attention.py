"""The one attention function every model in pixart_jax calls."""
import jax


def attention(q, k, v, mask=None, bias=None, scale=None):
    """Multi-head attention over (B, T, heads, head_dim) tensors; `mask` is boolean, broadcastable to
    (B, heads, T, S), True = attend. Softmax runs in fp32 inside `jax.nn.dot_product_attention`, which picks
    the fastest implementation the platform supports (XLA on CPU, cuDNN on GPU where shapes and dtypes allow)."""
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale)
