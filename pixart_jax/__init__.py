"""pixart-jax: PixArt-α / PixArt-δ in JAX + Flax NNX, with parity to the PyTorch reference."""
from pixart_jax.models.controlnet import ControlNetConfig, PixArtControlNet
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS, PixArtConfig
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet, save_controlnet_jax
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.transformer import load_transformer, save_diffusers, save_jax, save_original
from pixart_jax.weights.vae import load_vae

__all__ = ["PRESETS", "ControlNetConfig", "PixArtConfig", "PixArtControlNet", "PixArtControlNetPipeline",
           "PixArtPipeline", "PixArtTransformer",
           "load_controlnet", "load_text_encoder", "load_transformer", "load_vae", "save_controlnet",
           "save_controlnet_jax", "save_diffusers", "save_jax", "save_original"]
