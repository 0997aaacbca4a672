"""The PixArt-α DiT in Flax NNX (Chen et al. 2023, arXiv 2310.00426, §2.3; PixArt-alpha
`diffusion/model/nets/PixArtMS.py`, diffusers `PixArtTransformer2DModel`): patch tokens, adaLN-single, self- and
cross-attention blocks.

Parameters are fp32; `dtype` is the compute dtype of the matmuls. LayerNorm, softmax and the timestep features
run in fp32, and in fp32 compute every matmul runs at "highest" precision so fp32 means fp32 on GPU/TPU too.
The blocks are stored stacked (leading `depth` axis) and run with `jax.lax.scan`: one block is compiled once.
`remat` (a RematPolicy) chooses what the backward pass recomputes: nothing, each whole block from its input (one
checkpoint per block, as the reference trains) or all but the weight matmuls. `activation_dtype` is the dtype of
the residual stream carried between blocks (what per-block remat keeps for the backward pass). `attention_kernel`
picks the self-attention kernel (pixart_jax/models/attention.py; `auto`: by platform); the masked cross-attention over
the caption tokens is left to `auto`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from pixart_jax.choices import AttentionKernel, RematPolicy, choose
from pixart_jax.models.attention import attention
from pixart_jax.models.embeddings import patchify, sincos_pos_embed, timestep_features, unpatchify
from pixart_jax.models.transformer_config import PixArtConfig
from pixart_jax.sharding import stack_axes

xavier = nnx.initializers.xavier_uniform()
normal_002 = nnx.initializers.normal(0.02)
zeros = nnx.initializers.zeros
# Logical axes of an adaLN scale-shift table (rows, width); linear kernels are (kernel_in, kernel_out), and the
# stacked blocks add a leading "layers" axis. The training config's mesh rules map these names to mesh axes.
TABLE_AXES = (None, "table")


class BlockInputs(NamedTuple):
    """What every block of a forward sees besides its tokens: adaLN t0 (B, 6D), projected captions (B, L, D), the
    caption mask (B, 1, 1, L) or None, and the self-attention kernel."""
    t0: jax.Array
    context: jax.Array
    mask: jax.Array | None
    kernel: AttentionKernel = AttentionKernel.auto


def stacked(make, count, key):
    """`count` modules `make(rngs)` stored stacked along a new leading "layers" axis, each initialised from its own
    split of `key` (one jax.lax.scan runs them, so one of them is compiled)."""
    module_def = nnx.graphdef(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    modules = nnx.merge(module_def, jax.vmap(lambda k: nnx.split(make(nnx.Rngs(k)))[1])(jax.random.split(key, count)))
    stack_axes(modules)
    return modules


def scan_layers(body, carry, layers, remat=RematPolicy.none):
    """(carry, stacked ys): jax.lax.scan of `body(carry, layer) -> (carry, y)` over stacked `layers`; `remat` (a
    RematPolicy) says what of each layer's activations the backward pass recomputes."""
    remat = RematPolicy(remat)
    if remat is not RematPolicy.none:
        body = jax.checkpoint(body, prevent_cse=False, policy=remat.jax)
    return jax.lax.scan(body, carry, layers)


class Buffer(nnx.Variable):
    """A loaded, never-trained tensor (the `y_embedding` null caption): not an nnx.Param, so no optimizer sees it."""


def layer_norm(x, eps):
    """LayerNorm without affine parameters, computed in fp32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return (x32 - mean) * jax.lax.rsqrt(var + eps)


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


class Dense(nnx.Linear):
    """A linear layer with fp32 parameters; its kernel (in, out) and bias (out,) carry logical axes for sharding."""

    def __init__(self, din, dout, dtype, kernel_init=xavier, bias_init=zeros, *, rngs):
        super().__init__(din, dout, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                         bias_init=bias_init, kernel_metadata={"axes": ("kernel_in", "kernel_out")},
                         bias_metadata={"axes": ("kernel_out",)}, rngs=rngs)
        self.lora = nnx.data(None)  # LoRA adapters (pixart_jax/models/lora.py) attach here

    def __call__(self, x):
        y = super().__call__(x)
        return y if self.lora is None else self.lora(x, y)


class Mlp(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, din, dhidden, dout, act, dtype, init=xavier, *, rngs):
        self.fc1 = Dense(din, dhidden, dtype, init, rngs=rngs)
        self.fc2 = Dense(dhidden, dout, dtype, init, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nnx.Module):
    def __init__(self, cfg, dtype, *, rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = Dense(d, 3 * d, dtype, rngs=rngs)
        self.proj = Dense(d, d, dtype, rngs=rngs)

    def __call__(self, x, kernel=AttentionKernel.auto):
        qkv = rearrange(self.qkv(x), "b n (qkv h d) -> b n qkv h d", qkv=3, h=self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # slices, not a transpose: TPU plans keep no copy
        return self.proj(rearrange(attention(q, k, v, kernel=kernel), "b n h d -> b n (h d)"))


class CrossAttention(nnx.Module):
    """Image tokens attend to the projected caption tokens; padded tokens are masked out. No norm, no gate."""

    def __init__(self, cfg, dtype, *, rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q = Dense(d, d, dtype, rngs=rngs)
        self.kv = Dense(d, 2 * d, dtype, rngs=rngs)
        self.proj = Dense(d, d, dtype, zeros, rngs=rngs)

    def __call__(self, x, context, mask):
        q = rearrange(self.q(x), "b n (h d) -> b n h d", h=self.heads)
        kv = rearrange(self.kv(context), "b m (kv h d) -> b m kv h d", kv=2, h=self.heads)
        k, v = kv[:, :, 0], kv[:, :, 1]
        return self.proj(rearrange(attention(q, k, v, mask=mask), "b n h d -> b n (h d)"))


class PixArtBlock(nnx.Module):
    """x += gate_msa*SelfAttn(mod(LN x)); x += CrossAttn(x, c); x += gate_mlp*MLP(mod(LN x))  (spec §1.9)."""

    def __init__(self, cfg, dtype, *, rngs):
        d = cfg.hidden_size
        self.eps = cfg.norm_eps
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (6, d)) / np.sqrt(d), axes=TABLE_AXES)
        self.attn = SelfAttention(cfg, dtype, rngs=rngs)
        self.cross_attn = CrossAttention(cfg, dtype, rngs=rngs)
        self.mlp = Mlp(d, cfg.mlp_hidden, d, gelu_tanh, dtype, rngs=rngs)

    def __call__(self, x, t0, context, mask, kernel=AttentionKernel.auto):
        mod = self.scale_shift_table[None] + t0.reshape(t0.shape[0], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=1)
        x = x + gate_msa * self.attn(layer_norm(x, self.eps) * (1 + scale_msa) + shift_msa, kernel)
        x = x + self.cross_attn(x, context, mask)
        return x + gate_mlp * self.mlp(layer_norm(x, self.eps) * (1 + scale_mlp) + shift_mlp)


class FinalLayer(nnx.Module):
    """LN, modulated by its own 2-row table plus the raw conditioning t (not t_block(t)), then a zero-init linear."""

    def __init__(self, cfg, dtype, *, rngs):
        d = cfg.hidden_size
        self.eps = cfg.norm_eps
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (2, d)) / np.sqrt(d), axes=TABLE_AXES)
        self.linear = Dense(d, cfg.patch_size ** 2 * cfg.out_channels, dtype, zeros, rngs=rngs)

    def __call__(self, x, t):
        shift, scale = jnp.split(self.scale_shift_table[None] + t[:, None], 2, axis=1)
        return self.linear(layer_norm(x, self.eps) * (1 + scale) + shift)


class PatchEmbed(nnx.Module):
    """The 2x2 stride-2 conv as a dense layer over flattened patches; kernel kept in conv (kh, kw, in, out) form."""

    def __init__(self, cfg, dtype, *, rngs):
        p, c, d = cfg.patch_size, cfg.in_channels, cfg.hidden_size
        self.patch, self.dtype = p, dtype
        self.kernel = nnx.Param(xavier(rngs.params(), (p * p * c, d)).reshape(p, p, c, d),
                                axes=(None, None, "kernel_in", "kernel_out"))
        bound = 1 / np.sqrt(p * p * c)  # PyTorch's Conv2d default bias init, which the reference keeps
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (d,), minval=-bound, maxval=bound),
                              axes=("kernel_out",))
        self.lora = nnx.data(None)  # LoRA adapters (pixart_jax/models/lora.py) attach here, as a conv LoRA in PEFT

    def __call__(self, latents):
        patches = patchify(latents, self.patch).astype(self.dtype)                             # (B, N, p, p, C)
        y = jnp.einsum("bnijc,ijcd->bnd", patches, self.kernel[...].astype(self.dtype)) + self.bias[...]
        return y if self.lora is None else self.lora(patches, y)                               # (B, N, D)


def null_caption_init(key, cfg):
    """The `y_embedding` a model starts with: N(0, 1/caption_channels), as the reference initialises it."""
    return jax.random.normal(key, (cfg.max_tokens, cfg.caption_channels)) / np.sqrt(cfg.caption_channels)


class PixArtTransformer(nnx.Module):
    """PixArt-α / PixArt-δ DiT. Call with diffusers' tensors: latents (B, C, H, W) NCHW, timestep (B,),
    encoder_hidden_states (B, L, caption_channels), encoder_attention_mask (B, L) 0/1, and for micro-conditioned
    (MS) models resolution (B, 2) = [height, width] in pixels and aspect_ratio (B, 1). Returns (B, 8, H, W)."""

    def __init__(self, cfg: PixArtConfig, dtype=jnp.float32, *, remat: RematPolicy = RematPolicy.none,
                 activation_dtype=jnp.float32, attention_kernel: AttentionKernel = AttentionKernel.auto,
                 rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg, self.dtype, self.activation_dtype = cfg, dtype, activation_dtype
        self.remat = choose(RematPolicy, remat, "remat")
        self.attention_kernel = choose(AttentionKernel, attention_kernel, "attention_kernel")
        self.x_embedder = PatchEmbed(cfg, dtype, rngs=rngs)
        self.t_embedder = Mlp(256, d, d, jax.nn.silu, dtype, normal_002, rngs=rngs)
        if cfg.micro_conditions:
            self.csize_embedder = Mlp(256, d // 3, d // 3, jax.nn.silu, dtype, normal_002, rngs=rngs)
            self.ar_embedder = Mlp(256, d // 3, d // 3, jax.nn.silu, dtype, normal_002, rngs=rngs)
        self.t_block = Dense(d, 6 * d, dtype, normal_002, rngs=rngs)
        self.y_proj = Mlp(cfg.caption_channels, d, d, gelu_tanh, dtype, normal_002, rngs=rngs)
        self.y_embedding = Buffer(null_caption_init(rngs.params(), cfg))
        self.blocks = stacked(lambda r: PixArtBlock(cfg, dtype, rngs=r), cfg.depth, rngs.params())
        self.final_layer = FinalLayer(cfg, dtype, rngs=rngs)

    def condition(self, timestep, resolution=None, aspect_ratio=None):
        """The summed conditioning vector t (B, D): timestep embedding + [emb(h), emb(w), emb(ar)] for MS."""
        t = self.t_embedder(timestep_features(timestep).astype(self.dtype))
        if self.cfg.micro_conditions:
            if resolution is None or aspect_ratio is None:
                raise ValueError("this PixArt model is micro-conditioned (an MS model): pass resolution (B, 2) "
                                 "and aspect_ratio (B, 1)")
            b = t.shape[0]
            hw = self.csize_embedder(timestep_features(jnp.reshape(resolution, -1)).astype(self.dtype))
            ar = self.ar_embedder(timestep_features(jnp.reshape(aspect_ratio, -1)).astype(self.dtype))
            t = t + jnp.concatenate([hw.reshape(b, -1), ar.reshape(b, -1)], axis=1)
        return t

    def precision(self):
        """The matmul precision context of this model's compute dtype ("highest" in fp32)."""
        return jax.default_matmul_precision("highest" if jnp.dtype(self.dtype) == jnp.float32 else "default")

    def tokens(self, latents, pos_table=None):
        """(x (B, N, D), grid (h, w)): patch tokens plus the sin-cos embedding of their grid, or `pos_table`
        (N, D) when given (a stored table)."""
        p = self.cfg.patch_size
        hh, ww = latents.shape[2:]
        if hh % p or ww % p:
            raise ValueError(f"latent size {hh}x{ww} is not divisible by the patch size {p}")
        h, w = hh // p, ww // p
        if pos_table is None:
            pos_table = sincos_pos_embed(self.cfg.hidden_size, h, w, self.cfg.base_size, self.cfg.interpolation_scale)
        return self.x_embedder(latents) + jnp.asarray(pos_table, jnp.float32)[None], (h, w)

    def conditioning(self, batch, timestep, encoder_hidden_states, encoder_attention_mask=None, resolution=None,
                     aspect_ratio=None):
        """(t (B, D), BlockInputs): the summed conditioning vector of the final layer and what every block sees."""
        timestep = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (batch,))
        t = self.condition(timestep, resolution, aspect_ratio)
        mask = None
        if encoder_attention_mask is not None:
            mask = (jnp.asarray(encoder_attention_mask) > 0)[:, None, None, :]
        return t, BlockInputs(self.t_block(jax.nn.silu(t)), self.y_proj(encoder_hidden_states), mask,
                              AttentionKernel(self.attention_kernel))

    def block(self, index):
        """Block `index` (an int or a traced scalar) of the stack, read in place (no copy of the stack)."""
        block_def, state = nnx.split(self.blocks)
        return nnx.merge(block_def, jax.tree.map(lambda a: a[index], state))

    def run_blocks(self, x, inputs, start=0, stop=None, collect=False):
        """x through blocks[start:stop], one jax.lax.scan (remat as the model's policy), carried in activation_dtype.
        The whole stack is scanned as it is stored; part of it (a ControlNet's frozen base) by index, which slices
        each block in place instead of copying the part (gradients for a part are still right, accumulated per
        block). With `collect`: (x, every block's output (blocks, B, N, D)), the features a PCM discriminator
        reads."""
        stop, carry = self.cfg.depth if stop is None else stop, self.activation_dtype
        x = x.astype(carry)

        def kept(y):
            return y, (y if collect else None)

        if (start, stop) == (0, self.cfg.depth):
            block_def, state = nnx.split(self.blocks)
            x, ys = scan_layers(lambda x, block: kept(nnx.merge(block_def, block)(x, *inputs).astype(carry)), x,
                                state, self.remat)
        else:
            x, ys = scan_layers(lambda x, i: kept(self.block(i)(x, *inputs).astype(carry)), x,
                                jnp.arange(start, stop), self.remat)
        return (x, ys) if collect else x

    def output(self, x, t, grid):
        """The final layer and unpatchify: tokens (B, N, D) -> (B, out_channels, H, W) float32."""
        out = self.final_layer(x, t)
        return unpatchify(out.astype(jnp.float32), *grid, self.cfg.patch_size, self.cfg.out_channels)

    def __call__(self, latents, timestep, encoder_hidden_states, encoder_attention_mask=None,
                 resolution=None, aspect_ratio=None):
        return self.forward(latents, timestep, encoder_hidden_states, encoder_attention_mask, resolution,
                            aspect_ratio)[0]

    def forward(self, latents, timestep, encoder_hidden_states, encoder_attention_mask=None, resolution=None,
                aspect_ratio=None, block_outputs=False):
        """(output (B, 8, H, W), every block's output tokens (depth, B, N, D) with `block_outputs`, else None)."""
        with self.precision():
            x, grid = self.tokens(latents)                                        # (B, N, D)
            t, inputs = self.conditioning(latents.shape[0], timestep, encoder_hidden_states,
                                          encoder_attention_mask, resolution, aspect_ratio)  # (B, D)
            if block_outputs:
                x, features = self.run_blocks(x, inputs, collect=True)            # (B, N, D), (depth, B, N, D)
            else:
                x, features = self.run_blocks(x, inputs), None                    # (B, N, D)
            return self.output(x, t, grid), features                              # (B, 8, H, W)
