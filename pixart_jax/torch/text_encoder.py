"""The T5 encoder of the PyTorch path: transformers' `T5EncoderModel`, in float or int8.

int8 (weight-only, the default backend): every linear, `wo` included, holds exactly the int8 codes and scales of
`pixart_jax.load_text_encoder(..., int8=True)` (the same quantisation code runs on the same arrays), read and
quantised one block at a time from a float checkpoint or read as stored from an int8 T5 folder
(pixart_jax.weights.t5_int8). `wo` computes in float32 (T5 v1.1 overflows there in float16), the rest in `dtype`.
int8_backend="bitsandbytes": transformers' LLM.int8 route of the reference recipe (`wo` stays float).
"""
import warnings

import torch
from transformers import BitsAndBytesConfig, T5EncoderModel
from transformers import T5Config as HFT5Config

from pixart_jax.choices import Int8Backend, choose
from pixart_jax.torch.int8 import replace_linears
from pixart_jax.torch.loading import assign, check_layout, empty_module, to_torch
from pixart_jax.weights import WeightsError
from pixart_jax.weights.keymaps.t5 import ENCODER_EMBED, INT8_SCALE, SHARED_EMBED
from pixart_jax.weights.t5 import encoder_parts, is_int8_checkpoint
from pixart_jax.weights.t5_int8 import hf_names, to_hf

BITSANDBYTES_MIN_CAPABILITY = (7, 5)  # bitsandbytes documents LLM.int8 for compute capability 7.5 and newer


def load_text_encoder(directory, device="cpu", dtype=torch.float32, int8=False,
                      int8_backend: Int8Backend | str = Int8Backend.weight_only):
    """T5EncoderModel of a Hugging Face T5 folder on `device`: `model(input_ids=, attention_mask=)`."""
    backend = choose(Int8Backend, int8_backend, "int8_backend")
    if not int8:
        if is_int8_checkpoint(directory):
            raise WeightsError(f"{directory} holds an int8 T5 (every linear as int8 codes and scales): load it "
                                  "with int8=True")
        model = T5EncoderModel.from_pretrained(directory, dtype=dtype)
        return model.to(device).eval().requires_grad_(False)
    if backend == Int8Backend.bitsandbytes:
        return _bitsandbytes(directory, device, dtype)
    return _weight_only(directory, device, dtype)


def _weight_only(directory, device, dtype):
    cfg, specs, parts = encoder_parts(directory, int8=True)
    names = hf_names(cfg.num_layers)
    model = replace_linears(empty_module(lambda: T5EncoderModel(HFT5Config.from_pretrained(directory))),
                            float32_names=("wo",))
    check_layout(model, {names[k][0]: shape[::-1] if names[k][1] else shape for k, (_, shape) in specs.items()},
                 directory, aliases=(ENCODER_EMBED,))
    tensors = {}
    for part in parts:  # one block of the checkpoint at a time on the host
        for key, value in to_hf(part, names).items():
            stays = key.endswith(INT8_SCALE) or value.dtype == "int8"
            tensors[key] = to_torch(value, device, None if stays else dtype)
    tensors[ENCODER_EMBED] = tensors[SHARED_EMBED]  # the tied embedding
    return assign(model, tensors, device)


def _bitsandbytes(directory, device, dtype):
    """Experimental: transformers' bitsandbytes 8-bit loading (`wo` kept float, as transformers does for T5)."""
    if is_int8_checkpoint(directory):
        raise WeightsError(f"{directory} holds our int8 T5; the bitsandbytes backend quantises a float T5 "
                              "folder itself: use int8_backend='weight-only'")
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < BITSANDBYTES_MIN_CAPABILITY:
        warnings.warn(f"bitsandbytes LLM.int8 is documented for compute capability >= 7.5; this GPU has "
                      f"{torch.cuda.get_device_capability(device)}: experimental", stacklevel=3)
    model = T5EncoderModel.from_pretrained(directory, dtype=dtype, device_map={"": str(device)},
                                           quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    return model.eval().requires_grad_(False)
