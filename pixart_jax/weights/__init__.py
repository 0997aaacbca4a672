"""Checkpoint formats (safetensors, torch .pth) and table-driven key maps between them and our parameters."""
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.mapping import Rule, export_weights, import_weights
from pixart_jax.weights.safetensors_io import load_safetensors, save_safetensors
from pixart_jax.weights.torch_pickle import load_pth, save_pth

__all__ = ["WeightsError", "Rule", "export_weights", "import_weights", "load_pth", "load_safetensors", "save_pth",
           "save_safetensors"]
