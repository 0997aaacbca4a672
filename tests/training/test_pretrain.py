"""`python -m train.pretrain configs/tiny.yaml workdir=... steps=...`: metrics, resume, sample grids, bad input."""
import json

import numpy as np
from PIL import Image

from tests.helpers.paths import CONFIGS
from train.pretrain import main

TINY = str(CONFIGS / "tiny.yaml")


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_config_trains_resumes_and_draws_samples(tmp_path, capsys):
    workdir = tmp_path / "tiny"
    args = [TINY, f"workdir={workdir}", "logging.progress=false", "sample.every=2", "sample.steps=2"]
    assert main(args + ["steps=2"]) == 0
    assert [r["step"] for r in records(workdir)] == [1, 2]
    assert {"loss", "lr", "grad_norm", "steps_per_s", "images_per_s"} <= set(records(workdir)[0])
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000002.png"))
    assert grid.shape == (256, 256, 3) and grid.std() > 0  # 2 x 2 images of 128 px (16 x 16 latents x 8)
    assert (workdir / "config.yaml").exists() and list((workdir / "tensorboard").iterdir())

    assert main(args + ["steps=3"]) == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    assert [r["step"] for r in records(workdir)] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records(workdir))


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    assert main([TINY, f"workdir={tmp_path / 'run'}", "optimizer.lr=fast"]) == 2
    assert "optimizer.lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resumed_metrics_drop_later_and_torn_records(tmp_path):
    from pixart_jax.training.metrics import MetricsWriter

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 1}\n{"step": 3, "lo')
    writer = MetricsWriter(tmp_path, enabled=True, start_step=1)
    writer.write(2, {"loss": 0.5})
    writer.close()
    assert [r["step"] for r in records(tmp_path)] == [1, 2] and records(tmp_path)[1]["loss"] == 0.5
