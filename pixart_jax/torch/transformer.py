"""The PixArt transformer of the PyTorch path: diffusers' `PixArtTransformer2DModel`, loaded from any layout
`pixart_jax.load_transformer` reads (diffusers folders read tensor by tensor; original .pth and our Orbax folders
converted through our key maps), with the checkpoint's null caption `y_embedding` kept where it has one."""
import torch
from diffusers import PixArtTransformer2DModel

from pixart_jax.torch.loading import assign, check_layout, empty_module, to_torch
from pixart_jax.weights.safetensors_io import tensor_spec
from pixart_jax.weights.transformer import diffusers_layout


def load_transformer(path, device="cpu", dtype=torch.float32, config=None):
    """PixArtTransformer2DModel on `device` with its weights in `dtype`; `model.y_embedding` (max_tokens, caption
    channels) is set when the checkpoint stores a null caption (diffusers folders do not). `config`: for original
    .pth files whose name does not say the variant (see pixart_jax.load_transformer)."""
    cfg, tensors, y_embedding = diffusers_layout(path, config)
    model = empty_module(lambda: PixArtTransformer2DModel.from_config(cfg.to_diffusers()))
    check_layout(model, {key: tensor_spec(tensors, key)[1] for key in tensors}, path)
    model = assign(model, {key: to_torch(tensors[key], device, dtype) for key in tensors}, device)
    if y_embedding is not None:
        model.register_buffer("y_embedding", to_torch(y_embedding, device, torch.float32), persistent=False)
    return model
