"""The thin PyTorch path (`pip install pixart-jax[torch]`): the same pipeline directories and weights, served
through PyTorch on GPUs (float16, int8 T5, staged low-memory generation) or CPUs. Importing `pixart_jax` never
imports this package (or torch)."""
import os

# This path runs JAX only for small work on the CPU (the default null caption, control-latent noise): a JAX with GPU
# support must not reserve most of the GPU's memory when it first starts (its default), which would leave PyTorch
# without room. Set before JAX starts a backend; a process that already ran JAX on the GPU keeps its setting.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from pixart_jax.torch.controlnet import PixArtControlNetTransformer, load_controlnet
from pixart_jax.torch.int8 import Int8Linear
from pixart_jax.torch.memory import StageMemory, format_report
from pixart_jax.torch.pipeline import PixArtTorchPipeline, TorchPipelineOutput, diffusers_scheduler
from pixart_jax.torch.text_encoder import load_text_encoder
from pixart_jax.torch.transformer import load_transformer

__all__ = ["Int8Linear", "PixArtControlNetTransformer", "PixArtTorchPipeline", "StageMemory", "TorchPipelineOutput",
           "diffusers_scheduler", "format_report", "load_controlnet", "load_text_encoder", "load_transformer"]
