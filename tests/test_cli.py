"""The `pixart-jax` console script, as a user runs it."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def test_sample_random_writes_a_png(tmp_path):
    out = tmp_path / "sample.png"
    script = os.path.join(os.path.dirname(sys.executable), "pixart-jax")
    run = subprocess.run([script, "sample-random", "--size", "64", "--steps", "3", "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    assert "compile" in run.stdout and "run" in run.stdout
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # an image, not a constant
