"""The official ControlNet-Transformer fixtures in shared/ (tiny `ControlPixArtMSHalf` / `ControlPixArtHalf` on
random weights: controlnet.pth, config.json and io.npz of their inputs and outputs) and running ours (JAX) or the
PyTorch wrapper (pixart_jax.torch.controlnet) on them."""
import numpy as np

from tests.helpers.fixtures import shared_fixture

CLASSES = {"ms": "controlnet-ms-tiny", "512": "controlnet-512-tiny"}


def fixture(name):
    directory = shared_fixture(CLASSES[name])
    return str(directory), dict(np.load(directory / "io.npz"))


def run(model, io, control=True, micro=True):
    kwargs = dict(resolution=io["img_hw"], aspect_ratio=io["aspect_ratio"]) if micro else {}
    return np.asarray(model(io["x"], io["t"], io["y"], io["mask"], control=io["c"] if control else None, **kwargs))


def run_torch(model, io, control=True):
    """The PyTorch ControlNet wrapper (or a PEFT model around it) on the fixture's inputs, with or without control."""
    import torch

    micro = model.config.use_additional_conditions
    added = {"resolution": torch.from_numpy(io["img_hw"]), "aspect_ratio": torch.from_numpy(io["aspect_ratio"])}
    with torch.inference_mode():
        (out,) = model(*(torch.from_numpy(io[k]) for k in ("x", "y", "t")), added if micro else None,
                       torch.from_numpy(io["mask"]), control_latents=torch.from_numpy(io["c"]) if control else None,
                       return_dict=False)
    return out.numpy()
