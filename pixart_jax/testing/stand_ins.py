"""Tiny stand-ins for the real T5 tokenizer, T5 encoder and VAE, and a whole PixArt pipeline folder of them, saved in
their real on-disk layouts (no torch)."""
import dataclasses
import json
import os
import pathlib

from flax import nnx

from pixart_jax.models.t5 import T5Config, T5Encoder
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.prompts import train_tokenizer
from pixart_jax.samplers import DPMSolverMultistep, save_scheduler_config
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.weights import export_weights, save_safetensors
from pixart_jax.weights.keymaps.t5 import t5_rules
from pixart_jax.weights.keymaps.vae import vae_rules
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.transformer import save_diffusers

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


def save_pipeline(directory, transformer=None, sampler=None, seed=0):
    """A PixArt pipeline folder in the diffusers layout (model_index.json, transformer/, text_encoder/, tokenizer/,
    vae/, scheduler/) of the stand-ins above and `transformer` (default: the "tiny" preset with every weight drawn
    at random, so its output is not zero) with `sampler`'s scheduler config (default DPM-Solver++); returns the
    folder's path. `PixArtPipeline.from_pretrained` reads it."""
    directory = os.fspath(directory)
    if transformer is None:
        transformer = redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(seed)), seed)
    save_diffusers(transformer, os.path.join(directory, "transformer"))
    save_t5(pathlib.Path(directory, "text_encoder"), seed)
    save_tokenizer(os.path.join(directory, "tokenizer"))
    save_vae(pathlib.Path(directory, "vae"), seed)
    save_scheduler_config(sampler or DPMSolverMultistep(), os.path.join(directory, "scheduler"))
    with open(os.path.join(directory, "model_index.json"), "w") as f:
        json.dump({"_class_name": "PixArtAlphaPipeline"}, f)
    return directory
