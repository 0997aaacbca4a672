"""The Stable Diffusion AutoencoderKL (Rombach et al. 2022, arXiv 2112.10752; diffusers `AutoencoderKL`) in Flax
NNX, configured and loaded from a diffusers `vae/` folder.

Encoder: conv_in, per level `layers_per_block` resnets and (except the last level) a stride-2 conv with PyTorch's
asymmetric (0, 1, 0, 1) padding, a mid block (resnet, single-head self-attention, resnet), GroupNorm, SiLU and a
conv to the 2 x latent_channels moments. Decoder: the mirror image with one more resnet per level and nearest 2x
upsampling + conv. Inputs and outputs are NCHW like diffusers; inside, activations are NHWC. Parameters are fp32;
`dtype` is the compute dtype of the convolutions and matmuls, GroupNorm and softmax run in fp32.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.attention import attention

LATENT_SCALE = 0.18215  # the SD VAE's scaling factor: model latents are VAE latents times this

EPS = 1e-6  # every GroupNorm of the diffusers VAE


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The fields of a diffusers AutoencoderKL `config.json`, with diffusers' defaults for absent ones."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = LATENT_SCALE
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def spatial_factor(self):
        """Image pixels per latent pixel, per side."""
        return 2 ** (len(self.block_out_channels) - 1)


# The Stable Diffusion VAE (`sd-vae-ft-ema`) that PixArt uses.
SD_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm (affine, two-pass variance) over NHWC, computed in fp32, returned in the input dtype."""

    def __init__(self, channels, groups):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.groups = groups

    def __call__(self, x):
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + EPS)).reshape(b, h, w, c)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


def _conv(din, dout, kernel, dtype, rngs, stride=1, padding=None):
    pad = kernel // 2 if padding is None else padding
    pad = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    return nnx.Conv(din, dout, (kernel, kernel), strides=stride, padding=pad, dtype=dtype, param_dtype=jnp.float32,
                    rngs=rngs)


class ResnetBlock(nnx.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), the skip through a 1x1 conv when channels change."""

    def __init__(self, din, dout, groups, dtype, *, rngs):
        self.norm1 = GroupNorm(din, groups)
        self.conv1 = _conv(din, dout, 3, dtype, rngs)
        self.norm2 = GroupNorm(dout, groups)
        self.conv2 = _conv(dout, dout, 3, dtype, rngs)
        self.conv_shortcut = _conv(din, dout, 1, dtype, rngs) if din != dout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SpatialAttention(nnx.Module):
    """One-head self-attention over all H*W positions, GroupNorm first, residual added."""

    def __init__(self, channels, groups, dtype, *, rngs):
        self.norm = GroupNorm(channels, groups)
        linear = lambda: nnx.Linear(channels, channels, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)  # noqa
        self.to_q, self.to_k, self.to_v, self.to_out = linear(), linear(), linear(), linear()

    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, 1, c)
        out = attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        return x + self.to_out(out).reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, channels, cfg, dtype, *, rngs):
        groups = cfg.norm_num_groups
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, dtype, rngs=rngs) for _ in range(2)])
        self.attention = (SpatialAttention(channels, groups, dtype, rngs=rngs) if cfg.mid_block_add_attention
                          else None)

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class DownBlock(nnx.Module):
    def __init__(self, din, dout, cfg, downsample, dtype, *, rngs):
        self.resnets = nnx.List([ResnetBlock(din if i == 0 else dout, dout, cfg.norm_num_groups, dtype, rngs=rngs)
                                 for i in range(cfg.layers_per_block)])
        # PyTorch pads right/bottom by one, then convolves 3x3 with stride 2 and no padding.
        self.downsample = _conv(dout, dout, 3, dtype, rngs, stride=2, padding=((0, 1), (0, 1))) if downsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsample is None else self.downsample(x)


class UpBlock(nnx.Module):
    def __init__(self, din, dout, cfg, upsample, dtype, *, rngs):
        self.resnets = nnx.List([ResnetBlock(din if i == 0 else dout, dout, cfg.norm_num_groups, dtype, rngs=rngs)
                                 for i in range(cfg.layers_per_block + 1)])
        self.upsample = _conv(dout, dout, 3, dtype, rngs) if upsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsample is None:
            return x
        return self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))  # nearest-neighbour 2x


class Encoder(nnx.Module):
    def __init__(self, cfg, dtype, *, rngs):
        channels = cfg.block_out_channels
        self.conv_in = _conv(cfg.in_channels, channels[0], 3, dtype, rngs)
        self.down_blocks = nnx.List([
            DownBlock(channels[max(i - 1, 0)], c, cfg, i < len(channels) - 1, dtype, rngs=rngs)
            for i, c in enumerate(channels)])
        self.mid_block = MidBlock(channels[-1], cfg, dtype, rngs=rngs)
        self.norm_out = GroupNorm(channels[-1], cfg.norm_num_groups)
        self.conv_out = _conv(channels[-1], 2 * cfg.latent_channels, 3, dtype, rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(self.mid_block(x))))


class Decoder(nnx.Module):
    def __init__(self, cfg, dtype, *, rngs):
        channels = cfg.block_out_channels[::-1]
        self.conv_in = _conv(cfg.latent_channels, channels[0], 3, dtype, rngs)
        self.mid_block = MidBlock(channels[0], cfg, dtype, rngs=rngs)
        self.up_blocks = nnx.List([
            UpBlock(channels[max(i - 1, 0)], c, cfg, i < len(channels) - 1, dtype, rngs=rngs)
            for i, c in enumerate(channels)])
        self.norm_out = GroupNorm(channels[-1], cfg.norm_num_groups)
        self.conv_out = _conv(channels[-1], cfg.out_channels, 3, dtype, rngs)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


def _nhwc(x, dtype):
    return jnp.transpose(jnp.asarray(x), (0, 2, 3, 1)).astype(dtype)


def _nchw(x):
    return jnp.transpose(x, (0, 3, 1, 2)).astype(jnp.float32)


class AutoencoderKL(nnx.Module):
    """encode(images) -> posterior (mean, std); decode(latents) -> images. NCHW in and out, outputs in fp32.

    Latent convention as diffusers: `decode` takes latents already divided by `scaling_factor` (0.18215 for the
    SD VAE); the diffusion model works on `scaling_factor * latents`.
    """

    def __init__(self, cfg: VAEConfig, dtype=jnp.float32, *, rngs: nnx.Rngs):
        if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16):
            # The SD VAE overflows in float16 (diffusers upcasts it to fp32 for that reason).
            raise ValueError(f"unsupported VAE compute dtype {jnp.dtype(dtype)}: use jnp.float32 or jnp.bfloat16")
        self.cfg = cfg
        self.dtype = jnp.dtype(dtype)
        self.scaling_factor = cfg.scaling_factor
        self.spatial_factor = cfg.spatial_factor
        self.encoder = Encoder(cfg, dtype, rngs=rngs)
        self.decoder = Decoder(cfg, dtype, rngs=rngs)
        moments, latents = 2 * cfg.latent_channels, cfg.latent_channels
        self.quant_conv = _conv(moments, moments, 1, dtype, rngs) if cfg.use_quant_conv else None
        self.post_quant_conv = _conv(latents, latents, 1, dtype, rngs) if cfg.use_post_quant_conv else None

    def _precision(self):
        return jax.default_matmul_precision("highest" if self.dtype == jnp.float32 else "default")

    def encode(self, images):
        """images (B, C, H, W) in [-1, 1] -> (mean, std) of the diagonal Gaussian posterior, each (B, 4, H/8, W/8)."""
        with self._precision():
            moments = self.encoder(_nhwc(images, self.dtype))
            if self.quant_conv is not None:
                moments = self.quant_conv(moments)
        mean, logvar = jnp.split(_nchw(moments), 2, axis=1)
        return mean, jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0))

    @staticmethod
    def sample(mean, std, key):
        """A draw from the posterior: mean + std * N(0, 1), the noise from the explicit `key`."""
        return mean + std * jax.random.normal(key, mean.shape, mean.dtype)

    def decode(self, latents):
        """latents (B, 4, h, w), already divided by the scaling factor -> images (B, C, 8h, 8w), about [-1, 1]."""
        with self._precision():
            z = _nhwc(latents, self.dtype)
            if self.post_quant_conv is not None:
                z = self.post_quant_conv(z)
            return _nchw(self.decoder(z))
