"""Run metrics on process 0: one JSON object per optimizer step in WORKDIR/metrics.jsonl, TensorBoard scalars
and images (tensorboardX) under WORKDIR/tensorboard. Other processes get a writer that does nothing."""
import json
import os

import numpy as np

from pixart_jax.files import atomic_file


def _step_of(line):
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a killed run
        return None


def _truncate_after(path, step):
    """Drops records past `step` (written after the checkpoint a resumed run restarts from) and torn lines."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if (logged := _step_of(line)) is not None and logged <= step]
    if len(kept) != len(lines):
        with atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as f:
            f.writelines(kept)


class MetricsWriter:
    """Writes scalars every step to metrics.jsonl and every `tb_every` steps to TensorBoard. On resume from
    `start_step`, records of later steps (from a killed run) are dropped so each step appears once."""

    def __init__(self, workdir, *, enabled, start_step=0, tb_every=1):
        self.enabled, self.tb_every = enabled, tb_every
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        _truncate_after(self.jsonl_path, start_step)
        self._jsonl = open(self.jsonl_path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step, scalars):
        """Records `scalars` ({name: float}) for optimizer step `step` (1-based: the step just completed)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if step % self.tb_every == 0:
            for name, value in scalars.items():
                self._tb.add_scalar(f"train/{name}", float(value), step)

    def flush(self):
        """Writes buffered TensorBoard events to disk (metrics.jsonl is flushed at every record)."""
        if self.enabled:
            self._tb.flush()

    def image(self, step, name, image):
        """Logs an (H, W, 3) uint8 image."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
