"""Weight-only int8 linears in PyTorch with the codes and scales of `pixart_jax.models.int8`: y = (x @ codesᵀ) · scale.

A plain dequantise-and-matmul that runs on any device (CPU included) and in any float dtype; on a GPU it trades a
little speed for memory, which is what int8 T5 is for (T5-XXL's linears: 4.6 GB as codes, 9.2 GB in fp16).
"""
import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """`weight` (out, in) int8 codes — named as nn.Linear's, so transformers' dtype checks see int8 — and
    `weight_scale` (out,) float32. compute_dtype: None computes in the input's dtype; T5's `wo` uses float32, where
    T5 v1.1 overflows in float16."""

    def __init__(self, in_features, out_features, compute_dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device="meta"))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device="meta"))

    def forward(self, x):
        dtype = self.compute_dtype or x.dtype
        return F.linear(x.to(dtype), self.weight.to(dtype)) * self.weight_scale.to(dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, compute_dtype={self.compute_dtype}"


def replace_linears(module, float32_names=()):
    """Replaces every bias-free nn.Linear inside `module` by an (empty) Int8Linear of the same shape; those named
    in `float32_names` compute in float32."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                if child.bias is not None:
                    raise ValueError(f"{name}: Int8Linear has no bias")
                dtype = torch.float32 if name in float32_names else None
                setattr(parent, name, Int8Linear(child.in_features, child.out_features, dtype))
    return module
