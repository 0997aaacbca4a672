"""The `pixart-jax` console script, as a user runs it."""
import numpy as np
from PIL import Image

from tests.commands import run_cli


def test_sample_random_writes_a_png(tmp_path):
    out = tmp_path / "sample.png"
    run = run_cli("sample-random", "--size", "64", "--steps", "3", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "compile" in run.stdout and "run" in run.stdout
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # an image, not a constant
