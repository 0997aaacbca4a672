"""Tiny random diffusers PixArt-α and PixArt-Σ pipelines saved in the real on-disk layout (no hub): the reference of the
end-to-end tests. Every weight is re-drawn at random; the tokenizer is a SentencePiece model trained here."""
import numpy as np

from pixart_jax.pipelines.prompts import train_tokenizer
from pixart_jax.testing.random_weights import redraw

CAPTION_TEXT = ["a small red circle at the top left", "a big blue square in the middle of the picture",
                "an astronaut riding a horse on the moon", "a photo of a cat sitting on a red sofa",
                "green triangle, yellow star, purple heart, orange ring"] * 20
TINY_T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16,
               feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True, dropout_rate=0.0)
TINY_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=8, num_layers=2,
                        caption_channels=32, norm_type="ada_norm_single", norm_elementwise_affine=False,
                        norm_eps=1e-6, activation_fn="gelu-approximate", attention_bias=True,
                        cross_attention_dim=48)
TINY_VAE = dict(block_out_channels=[16, 16, 16, 16], layers_per_block=1, norm_num_groups=8, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                sample_size=64)


def write_tokenizer(path, vocab_size=60):
    """A T5 tokenizer folder trained on CAPTION_TEXT, loaded as transformers' T5Tokenizer (diffusers needs that)."""
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(train_tokenizer(CAPTION_TEXT, path, vocab_size))


def build_pipeline(directory, *, micro, scheduler, seed=0, transformer=TINY_TRANSFORMER, t5=TINY_T5,
                   vae=TINY_VAE):
    """A diffusers PixArtAlphaPipeline with random components (tiny unless configs are given), saved to
    `directory`; returns it.

    micro: a micro-conditioned transformer (sample_size 128, as the pipeline passes micro-conditions only then)
    or a plain one with sample_size 32 (256 px resolution binning). scheduler: a diffusers scheduler instance.
    """
    from diffusers import PixArtAlphaPipeline

    size = dict(sample_size=128, use_additional_conditions=True) if micro else dict(sample_size=32)
    return _save(PixArtAlphaPipeline, directory, scheduler, seed, dict(transformer, **size), t5, vae)


def build_sigma_pipeline(directory, *, scheduler, seed=0, transformer=TINY_TRANSFORMER, t5=TINY_T5, vae=TINY_VAE,
                         sample_size=32):
    """A diffusers PixArtSigmaPipeline with random components saved to `directory`; returns it: PixArt-Σ's
    transformer settings at `sample_size` (32: Σ 256, position interpolation 0.5; 128: Σ 1024-MS, 2; no
    micro-conditions) and the SDXL VAE's scaling factor 0.13025."""
    from diffusers import PixArtSigmaPipeline

    size = dict(sample_size=sample_size, interpolation_scale=sample_size / 64, use_additional_conditions=False)
    return _save(PixArtSigmaPipeline, directory, scheduler, seed, dict(transformer, **size), t5,
                 dict(vae, scaling_factor=0.13025))


def _save(pipeline_class, directory, scheduler, seed, transformer, t5, vae):
    """`pipeline_class` of random components with these diffusers configs, saved to `directory`."""
    import torch
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = write_tokenizer(directory / "spm")
    pipe = pipeline_class(tokenizer=tokenizer, scheduler=scheduler,
                          transformer=redraw(PixArtTransformer2DModel(**transformer), seed + 1).eval(),
                          text_encoder=redraw(T5EncoderModel(T5Config(**t5)), seed + 2).eval(),
                          vae=redraw(AutoencoderKL(**vae), seed + 3, scale=0.5).eval())
    pipe.save_pretrained(directory)
    return pipe


def initial_latents(n, height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4, height // 8, width // 8)).astype(np.float32)
