"""The official ControlNet-Transformer fixtures in shared/ (tiny `ControlPixArtMSHalf` / `ControlPixArtHalf` on
random weights: controlnet.pth, config.json and io.npz of their inputs and outputs) and running ours on them."""
import numpy as np

from tests.helpers.fixtures import shared_fixture

CLASSES = {"ms": "controlnet-ms-tiny", "512": "controlnet-512-tiny"}


def fixture(name):
    directory = shared_fixture(CLASSES[name])
    return str(directory), dict(np.load(directory / "io.npz"))


def run(model, io, control=True, micro=True):
    kwargs = dict(resolution=io["img_hw"], aspect_ratio=io["aspect_ratio"]) if micro else {}
    return np.asarray(model(io["x"], io["t"], io["y"], io["mask"], control=io["c"] if control else None, **kwargs))
