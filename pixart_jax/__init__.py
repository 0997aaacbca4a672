"""pixart-jax: PixArt-α / PixArt-δ in JAX + Flax NNX, with parity to the PyTorch reference.

The package is arranged in floors, each importing only from those below it:
  choices, files, optim, seeds; images, sharding  primitives (optim: the CAME optimizer)
  models/, samplers/                              the networks (transformer, ControlNet, T5, VAE, HED) and samplers
  weights/                                        every weight-file reader and writer, key map and converter
  pipelines/                                      text-to-image and ControlNet pipelines, prompts, guidance, control
  training/, torch/, testing/                     training programs' parts; the PyTorch path; reference builders
  planning/, demo/                                ahead-of-time TPU plans; the embedded demo
  cli                                             the `pixart-jax` command
"""
from pixart_jax.files import FileError
from pixart_jax.models.controlnet import ControlNetConfig, PixArtControlNet
from pixart_jax.models.lora import LoRAParam, fuse_lora, merge_and_unload, set_adapters, unfuse_lora, unload_lora
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS, PixArtConfig
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
from pixart_jax.pipelines.prompt_cache import PromptCache
from pixart_jax.pipelines.prompts import encode_prompt
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers.registry import from_scheduler_config, make_sampler, to_scheduler_config
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet, save_controlnet_jax
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.hed import load_hed
from pixart_jax.weights.lora import add_lora, load_lora, save_lora, save_merged
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.t5_int8 import export_int8_t5
from pixart_jax.weights.transformer import load_transformer, save_diffusers, save_jax, save_original
from pixart_jax.weights.vae import load_vae

__all__ = ["PRESETS", "ControlNetConfig", "FileError", "GenerationRequest", "LoRAParam", "PixArtConfig",
           "PixArtControlNet", "PixArtControlNetPipeline", "PixArtPipeline", "PixArtTransformer", "PromptCache",
           "WeightsError", "add_lora", "encode_prompt", "export_int8_t5", "from_scheduler_config", "fuse_lora",
           "load_controlnet", "load_hed", "load_lora", "load_text_encoder", "load_transformer", "load_vae",
           "make_sampler", "merge_and_unload", "save_controlnet", "save_controlnet_jax", "save_diffusers", "save_jax",
           "save_lora", "save_merged", "save_original", "set_adapters", "to_scheduler_config", "unfuse_lora",
           "unload_lora"]
