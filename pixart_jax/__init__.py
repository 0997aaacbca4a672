"""pixart-jax: PixArt-α / PixArt-δ in JAX + Flax NNX, with parity to the PyTorch reference."""
from pixart_jax.checkpoints import load_transformer, save_diffusers, save_jax, save_original
from pixart_jax.config import PRESETS, PixArtConfig
from pixart_jax.controlnet import ControlNetConfig, PixArtControlNet
from pixart_jax.controlnet_checkpoints import load_controlnet, save_controlnet, save_controlnet_jax
from pixart_jax.controlnet_pipeline import PixArtControlNetPipeline
from pixart_jax.pipeline import PixArtPipeline
from pixart_jax.t5 import load_text_encoder
from pixart_jax.transformer import PixArtTransformer
from pixart_jax.vae import load_vae

__all__ = ["PRESETS", "ControlNetConfig", "PixArtConfig", "PixArtControlNet", "PixArtControlNetPipeline",
           "PixArtPipeline", "PixArtTransformer",
           "load_controlnet", "load_text_encoder", "load_transformer", "load_vae", "save_controlnet",
           "save_controlnet_jax", "save_diffusers", "save_jax", "save_original"]
