"""Tiny stand-ins for the real T5 tokenizer, T5 encoder and VAE, saved in their real on-disk layouts (no torch)."""
import dataclasses
import json

from flax import nnx

from pixart_jax.models.t5 import T5Config, T5Encoder
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.prompts import train_tokenizer
from pixart_jax.weights import export_weights, save_safetensors
from pixart_jax.weights.keymaps.t5 import t5_rules
from pixart_jax.weights.keymaps.vae import vae_rules
from pixart_jax.weights.nnx_state import flat_arrays

TOKENIZER_TEXT = ["a photo of a cat sitting on a red sofa", "an astronaut riding a horse on the moon, high quality",
                  "un chat noir dans la neige, très beau, photo de chats", "ein hund läuft über die straße",
                  "a wide panorama of mountains and a lake at sunset", "a tall tower in a small town"] * 20
TINY_T5 = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=16, relative_attention_max_distance=24)
# Four levels like the SD VAE, so latents are pixels / 8 as in training; a few channels keep it fast.
TINY_VAE = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4)


def save_tokenizer(directory, text=TOKENIZER_TEXT, vocab_size=90):
    """A T5 tokenizer folder trained on `text`; load it with `load_tokenizer` (not `vocab_file=`, see NOTES)."""
    return train_tokenizer(text, directory, vocab_size)


def save_t5(directory, seed=0, **config):
    """A random T5 encoder (TINY_T5 updated by `config`) as a Hugging Face folder; returns (path, model)."""
    fields = dict(TINY_T5, **config)
    model = T5Encoder(T5Config(**fields), rngs=nnx.Rngs(seed))
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(export_weights(t5_rules(fields["num_layers"]), flat_arrays(model)),
                     directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"model_type": "t5", **fields}))
    return str(directory), model


def save_vae(directory, seed=0, **config):
    """A random AutoencoderKL (TINY_VAE updated by `config`) as a diffusers folder; returns (path, model)."""
    cfg = VAEConfig(**dict(TINY_VAE, **config))
    model = AutoencoderKL(cfg, rngs=nnx.Rngs(seed))
    directory.mkdir(parents=True, exist_ok=True)
    levels = len(cfg.block_out_channels)
    save_safetensors(export_weights(vae_rules(levels, cfg.layers_per_block), flat_arrays(model)),
                     directory / "diffusion_pytorch_model.safetensors")
    config = dict(dataclasses.asdict(cfg), _class_name="AutoencoderKL",
                  down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory), model
