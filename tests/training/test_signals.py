"""Stopping a training program with a real signal: SIGINT (Ctrl-C) during training saves a checkpoint and exits 75,
as SIGTERM does; SIGTERM or SIGINT before the loop runs (imports, model build) exits 75 at once, in one line."""
import json
import signal
import time

import pytest

from pixart_jax.training.command import EXIT_PREEMPTED
from tests.helpers.commands import start_module
from tests.helpers.paths import CONFIGS

TINY = CONFIGS / "tiny.yaml"
QUICK = ["sample.every=0", "logging.progress=false", "data.synthetic_examples=16", "checkpoint_every=1000"]


def handles(pid, sig):
    """Whether process `pid` has a handler installed for `sig` (its SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        mask = next(line.split()[1] for line in status if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_ctrl_c_during_training_saves_and_exits_75(tmp_path):
    proc = start_module("train.pretrain", TINY, f"workdir={tmp_path}", "steps=1000", *QUICK)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(logged_steps(tmp_path)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    saved = int(out.split("SIGINT: saved checkpoint ")[1].split()[0])
    assert saved >= 2 and (tmp_path / "checkpoints" / str(saved)).is_dir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_before_the_loop_exits_75_in_one_line(sig, tmp_path):
    proc = start_module("train.pretrain", TINY, f"workdir={tmp_path / 'run'}", "steps=1000", *QUICK)
    deadline = time.time() + 10  # the handler is installed first thing, before the imports (seconds)
    while proc.poll() is None and time.time() < deadline and not handles(proc.pid, signal.SIGTERM):
        time.sleep(0.005)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out
    assert out == (f"{sig.name} outside the training loop: exiting without saving (re-running resumes from the newest "
                   "checkpoint)\n")
