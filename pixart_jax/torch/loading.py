"""Building torch modules from checkpoint arrays: the module tree is made without allocating its weights
(accelerate's meta parameters), then every parameter is assigned from the checkpoint, on the target device and in
the target dtype, after its keys and shapes are checked."""
import gc

import ml_dtypes
import numpy as np
import torch
from accelerate import init_empty_weights

from pixart_jax.weights import WeightsError


def empty_module(make):
    """`make()` with its parameters on the meta device (no memory); buffers are made for real."""
    with init_empty_weights(include_buffers=False):
        return make()


def to_torch(array, device, dtype=None):
    """A NumPy array (bfloat16 through ml_dtypes included) as a tensor on `device`, cast to `dtype` (None keeps
    it). The host copy is the array itself where it can be, so converting costs no second host copy."""
    array = np.asarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(np.require(array.view(np.int16), requirements=("C", "W"))).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.require(array, requirements=("C", "W")))
    return tensor.to(device=device, dtype=dtype or tensor.dtype)


def check_layout(module, shapes, where, aliases=()):
    """A WeightsError unless {key: shape} `shapes` fills exactly the parameters and persistent buffers of
    `module` (keys in `aliases` are filled by the caller). The message names every key and both shapes."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in aliases}
    problems = [f"missing key {k!r} (expected shape {s})" for k, s in expected.items() if k not in shapes]
    problems += [f"shape mismatch for key {k!r}: {where} has {tuple(shapes[k])}, model expects {s}"
                 for k, s in expected.items() if k in shapes and tuple(shapes[k]) != s]
    problems += [f"unexpected key {k!r} of shape {tuple(s)} (not part of the model's layout)"
                 for k, s in shapes.items() if k not in expected]
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsError(f"{where} does not fit the model:\n  " + "\n  ".join(problems[:20]) + more)


def assign(module, tensors, device):
    """Fills `module` (from empty_module, layout checked) with {key: tensor} and moves its buffers to `device`."""
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.to(device).eval().requires_grad_(False)


def release(device):
    """Returns freed memory: Python's garbage, then (on CUDA) the caching allocator's unused blocks."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
