"""Named choices as `str` enums (a config schema rejects any other value with the allowed list), and the dtype
tables: `DType` (the JAX models) and `TorchDType` (the PyTorch path and stored floats, float16 included)."""
import enum

import jax
import jax.numpy as jnp
import numpy as np


def choose(kind, value, what):
    """`value` as a member of the str Enum `kind`; a ValueError naming `what` and the allowed values otherwise."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[m.value for m in kind]}, got {value!r}") from None


class DType(enum.StrEnum):
    """Compute dtypes of the JAX models (matmuls and convolutions; parameters stay float32)."""
    float32 = "float32"
    bfloat16 = "bfloat16"

    @property
    def jax(self):
        return jnp.dtype(self.value)


class TorchDType(enum.StrEnum):
    """Compute dtypes of the PyTorch path (`pixart_jax.torch`), which float16 GPUs need, and storage dtypes of
    exported float tensors: DType's names plus float16."""
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    @property
    def numpy(self):
        return np.dtype(jnp.dtype(self.value))

    @property
    def torch(self):
        import torch  # only the PyTorch path asks, and it has torch

        return getattr(torch, self.value)


class Int8Backend(enum.StrEnum):
    """How the PyTorch path stores T5 in int8."""
    weight_only = "weight-only"    # every linear as pixart_jax.models.int8's codes and scales: the JAX path's numbers
    bitsandbytes = "bitsandbytes"  # transformers' LLM.int8 (the reference recipe; `wo` stays float)


class NoiseSource(enum.StrEnum):
    """Where the PyTorch path draws a seeded call's initial latents and sampler noise."""
    jax = "jax"      # jax.random, exactly the JAX pipeline's draws: one seed gives one image on both backends
    torch = "torch"  # a torch.Generator("cpu") seeded with it, as diffusers' pipelines draw (to compare with them)


class LoRAInit(enum.StrEnum):
    """How a new LoRA adapter's A starts (B starts at zero, so it changes nothing yet), as PEFT's init_lora_weights:
    True = "kaiming" (kaiming-uniform with a=√5, torch nn.Linear's default: U(±1/√fan_in)), "gaussian" N(0, 1/r²)."""
    kaiming = "kaiming"
    gaussian = "gaussian"


class OptimizerName(enum.StrEnum):
    """The optimizer of a training program's trained network (pixart_jax/training/optimizer.py)."""
    adamw = "adamw"    # PixArt-α, PixArt-δ, PCM
    came = "came"      # PixArt-Σ (pixart_jax/optim.py): factored second moments, about AdamW's memory minus one copy


class RematPolicy(enum.StrEnum):
    """What the backward pass of a transformer block keeps from the forward (the rest is recomputed)."""
    none = "none"      # keep every activation: fastest, most memory
    block = "block"    # keep only each block's input (one checkpoint per block, as the reference trains)
    dots = "dots"      # keep the outputs of the weight matmuls, recompute the rest (attention scores included)

    @property
    def jax(self):
        """The jax.checkpoint policy (None: save nothing but the inputs)."""
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable if self is RematPolicy.dots else None


class AttentionKernel(enum.StrEnum):
    """Attention implementations (pixart_jax/models/attention.py); auto chooses by platform."""
    auto = "auto"
    xla = "xla"          # jax.nn.dot_product_attention's XLA path: every platform
    cudnn = "cudnn"      # cuDNN fused flash attention: NVIDIA GPUs, bf16/fp16
    splash = "splash"    # Pallas splash attention: TPU (interpret mode elsewhere), no mask
