"""The thin PyTorch path (`pip install pixart-jax[torch]`): the same pipeline directories and weights, served
through PyTorch on GPUs (float16, int8 T5, staged low-memory generation) or CPUs. Importing `pixart_jax` never
imports this package (or torch)."""
from pixart_jax.torch.controlnet import PixArtControlNetTransformer, load_controlnet
from pixart_jax.torch.int8 import Int8Linear
from pixart_jax.torch.memory import StageMemory, format_report
from pixart_jax.torch.pipeline import PixArtTorchPipeline, TorchPipelineOutput, diffusers_scheduler
from pixart_jax.torch.text_encoder import load_text_encoder
from pixart_jax.torch.transformer import load_transformer

__all__ = ["Int8Linear", "PixArtControlNetTransformer", "PixArtTorchPipeline", "StageMemory", "TorchPipelineOutput",
           "diffusers_scheduler", "format_report", "load_controlnet", "load_text_encoder", "load_transformer"]
