"""Exact resume: a run stopped by SIGTERM, then killed with SIGKILL, then resumed ends with bitwise the same
parameters, EMA, optimizer state and per-step losses as an uninterrupted run (data order included)."""
import json
import os
import signal
import time

import jax
import numpy as np

from pixart_jax.training.command import EXIT_PREEMPTED
from pixart_jax.training.config import load_config
from pixart_jax.training.pretraining import train
from tests.helpers.commands import ROOT, start_module

STEPS = 100
OVERRIDES = [f"steps={STEPS}", "checkpoint_every=25", "sample.every=0", "logging.progress=false",
             "data.synthetic_examples=16"]


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def start_and_signal(workdir, sig, after_step):
    """Runs the CLI on `workdir` and sends `sig` once `after_step` appears in metrics.jsonl; returns the exit code
    and the last step logged before the signal."""
    proc = start_module("train.pretrain", ROOT / "configs" / "tiny.yaml", f"workdir={workdir}", *OVERRIDES,
                        devices=8)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = logged_steps(workdir)
        if steps and steps[-1] >= after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, steps[-1] if steps else None, out


def test_sigterm_then_sigkill_then_resume_is_bitwise_exact(tmp_path):
    reference = train(load_config(ROOT / "configs" / "tiny.yaml", [f"workdir={tmp_path / 'ref'}", *OVERRIDES]))

    run = tmp_path / "run"
    code, seen, out = start_and_signal(run, signal.SIGTERM, after_step=10)
    assert code == EXIT_PREEMPTED, out  # a scheduler can tell "preempted" from "done"
    assert "SIGTERM: saved checkpoint" in out, out
    first_stop = int(out.split("SIGTERM: saved checkpoint ")[1].split()[0])
    assert 10 <= first_stop < STEPS and str(first_stop) in os.listdir(run / "checkpoints")

    code, seen, out = start_and_signal(run, signal.SIGKILL, after_step=first_stop + 30)
    assert code == -signal.SIGKILL, out
    assert f"resumed from checkpoint {first_stop}" in out
    assert seen < STEPS and logged_steps(run)[-1] < STEPS  # really killed mid-run

    resumed = train(load_config(ROOT / "configs" / "tiny.yaml", [f"workdir={run}", *OVERRIDES]))
    print(f"exact resume: SIGTERM saved step {first_stop}, SIGKILL after step {seen}, resumed from "
          f"{min(resumed.losses) - 1}")
    assert logged_steps(run) == list(range(1, STEPS + 1))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(line)["loss"] for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert losses == ref_losses
    ours, ref = jax.tree.leaves(resumed.state), jax.tree.leaves(reference.state)
    assert len(ours) == len(ref)
    different = sum(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref))
    print(f"exact resume: {len(ours)} state arrays (params, EMA, Adam moments, step, rng), {different} differ bitwise")
    assert different == 0
