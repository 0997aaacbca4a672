"""Nothing in a workdir is lost: a run that cannot resume stops (one line, exit 3) touching nothing, unless told to
start over (the previous run is moved aside, byte for byte); a bad config, workdir or data source stops before
anything is written (exit 2); a NaN/Inf state is never saved; two runs never share a workdir, while a killed run's
lock does not block; TensorBoard holds every scalar up to the last checkpoint after a kill -9."""
import gc
import json
import pathlib
import re
import signal
import struct
import time

import pytest
from tensorboardX.proto import event_pb2

from pixart_jax.training.checkpoints import NonFiniteStateError
from pixart_jax.training.config import load_config
from pixart_jax.training.pretraining import train
from pixart_jax.training.workdir import LOCK_NAME, WorkdirBusyError
from tests.helpers.commands import ROOT, start_module
from tests.helpers.files import read_only_folder, snapshot, write_snapshot
from train.controlnet import main as controlnet_main
from train.lcm import main as lcm_main
from train.pretrain import main

TINY = str(ROOT / "configs" / "tiny.yaml")
QUICK = ["sample.every=0", "logging.progress=false", "data.synthetic_buckets=[1.0]", "data.synthetic_examples=16"]


def run(workdir, *overrides, program=main):
    return program([TINY, f"workdir={workdir}", *QUICK, *overrides])


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def steps_logged(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (checkpoints 1 and 2) and its byte-for-byte picture (the lock file aside)."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert run(workdir, "steps=2", "checkpoint_every=1") == 0
    return workdir, snapshot(workdir, ignore=[LOCK_NAME])


def test_a_changed_setting_stops_touching_nothing_and_start_over_moves_the_run_aside(finished, tmp_path, capsys):
    workdir, before = finished
    capsys.readouterr()
    assert run(workdir, "steps=3", "checkpoint_every=1", "optimizer.grad_accum_steps=2", "seed=1") == 3
    err = one_line(capsys)
    assert "checkpoint 2 in" in err and "optimizer.grad_accum_steps: 1 in the checkpoint, 2 now" in err
    assert "seed: 0 in the checkpoint, 1 now" in err and "on_mismatch=start_over" in err
    assert snapshot(workdir, ignore=[LOCK_NAME]) == before  # config.yaml and metrics.jsonl included

    copy = tmp_path / "run"
    write_snapshot(before, copy)  # start over in a copy: the module's run stays as it is
    assert run(copy, "steps=1", "checkpoint_every=1", "optimizer.grad_accum_steps=2",
               "on_mismatch=start_over") == 0
    assert "moved the previous run to" in capsys.readouterr().out
    assert snapshot(copy / "replaced-1") == before
    assert steps_logged(copy) == [1] and "grad_accum_steps: 2" in (copy / "config.yaml").read_text()


def test_settings_that_may_change_on_resume_do_not_stop_it(finished, tmp_path, capsys):
    workdir, before = finished
    copy = tmp_path / "run"
    write_snapshot(before, copy)
    assert run(copy, "steps=3", "checkpoint_every=3", "mesh.fsdp=2", "logging.log_every=2",
               "checkpoint.max_to_keep=1") == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    assert steps_logged(copy) == [1, 2, 3]


def test_another_state_structure_stops_touching_nothing(finished, capsys):
    workdir, before = finished
    capsys.readouterr()
    assert run(workdir, "steps=3", "checkpoint_every=1", program=lcm_main) == 3  # an LCD state: teacher, student
    err = one_line(capsys)
    assert "does not fit this run: 114 arrays this run needs are not in it (student/" in err
    assert "76 arrays in it this run has no place for (ema/" in err
    assert snapshot(workdir, ignore=[LOCK_NAME]) == before


def test_checkpoints_none_of_which_restores_stop_the_run_touching_nothing(finished, tmp_path, capsys):
    workdir, before = finished
    copy = tmp_path / "run"
    chunk = lambda name: "/state/" in name and pathlib.Path(name).parent.name == "d"  # noqa: E731
    damaged = {name: b"" if data is not None and chunk(name) else data for name, data in before.items()}
    write_snapshot(damaged, copy)  # every array chunk of every checkpoint emptied
    capsys.readouterr()
    assert run(copy, "steps=2", "checkpoint_every=1") == 3
    time.sleep(1)
    gc.collect()  # Orbax's stray reads finish into a closed event loop: their reports must not reach the user
    err = one_line(capsys)
    assert "none of the 2 checkpoints in" in err and "checkpoint 2: " in err and "checkpoint 1: " in err
    assert snapshot(copy, ignore=[LOCK_NAME]) == damaged


def test_bad_config_workdir_or_data_source_stop_before_anything_is_written(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("steps: [1, 2\nseed: 0\n")
    assert main([str(bad_yaml), f"workdir={tmp_path / 'a'}"]) == 2
    assert "is not valid YAML" in one_line(capsys)
    assert run(tmp_path / "b", "steps=1", "checkpoint_every=1", f"data.source={tmp_path / 'no-features'}") == 2
    assert f"data.source {tmp_path / 'no-features'}: feature directory" in one_line(capsys)
    (tmp_path / "file").write_text("mine")
    assert run(tmp_path / "file", "steps=1", "checkpoint_every=1") == 2
    assert "is a file, not a folder" in one_line(capsys)
    read_only = read_only_folder(tmp_path)
    assert run(read_only, "steps=1", "checkpoint_every=1") == 2
    assert f"workdir {read_only} is not writable" in one_line(capsys)
    assert run(read_only / "run", "steps=1", "checkpoint_every=1") == 2
    assert f"{read_only} is not writable" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "file", "read-only"]
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("program, override, message", [
    (main, "mesh.fsdp=3", "mesh.fsdp=3 does not divide the 8 devices"),
    (main, "mesh.fsdp=16", "mesh.fsdp=16 does not divide the 8 devices"),
    (main, "mesh.fsdp=0", "invalid training config: mesh.fsdp must be at least 1, got 0"),
    (main, "mesh.data=3", "mesh data=3 x fsdp=1 needs 3 devices, there are 8"),
    (main, "seed=99999999999999999999", "seed must be in [0, 4294967295], got 99999999999999999999"),
    (main, "optimizer.lr=nan", "optimizer.lr must be a finite number, got nan"),
    (lcm_main, "lcm.guidance=nan", "lcm.guidance must be a finite number, got nan"),
    (controlnet_main, "controlnet.copies=2", "controlnet.copies must be at most the base's depth - 1 = 1"),
], ids=lambda v: v.__module__ if callable(v) else None)
def test_settings_that_cannot_run_stop_before_anything_is_built(program, override, message, tmp_path, capsys):
    assert run(tmp_path / "run", "steps=1", "checkpoint_every=1", override, program=program) == 2
    assert one_line(capsys).endswith(message)
    assert not (tmp_path / "run").exists()  # no workdir, no lock


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_a_nonfinite_state_is_never_saved(tmp_path, capsys):
    """The loss of a step comes from the weights before its update: an lr that overflows float32 keeps it finite
    while the update writes Inf/NaN into the weights, which must not become a checkpoint."""
    overrides = ["steps=1", "checkpoint_every=1", "optimizer.lr=1e39", "optimizer.warmup_steps=0"]
    assert run(tmp_path, *overrides) == 3
    err = one_line(capsys)
    assert re.search(r"the state after step 1 has NaN/Inf values in \d+ of \d+ arrays \(ema/.*stopping without", err)
    assert not list((tmp_path / "checkpoints").iterdir())
    assert err.endswith(f"No checkpoint was saved yet in {tmp_path / 'checkpoints'}: re-running starts from step 0")
    with pytest.raises(NonFiniteStateError, match="No checkpoint was saved yet in"):
        train(load_config(TINY, [f"workdir={tmp_path}", *QUICK, *overrides]))


def tensorboard_steps(workdir, tag="train/loss"):
    """The steps of `tag` in the TensorBoard event files (TFRecord framing: length, its CRC, data, its CRC)."""
    steps = []
    for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            if i + 12 + n + 4 > len(data):
                break
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            steps += [event.step for value in event.summary.value if value.tag == tag]
            i += 12 + n + 4
    return steps


def test_one_run_per_workdir_a_killed_runs_lock_never_blocks_and_tensorboard_survives_kill_9(tmp_path, capsys):
    args = ["steps=1000", "checkpoint_every=2", *QUICK]
    proc = start_module("train.pretrain", TINY, f"workdir={tmp_path}", *args, devices=8)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "checkpoints" / "4").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        cfg = load_config(TINY, [f"workdir={tmp_path}", *args])
        with pytest.raises(WorkdirBusyError, match=rf"workdir {tmp_path} is in use by process {proc.pid} on"):
            train(cfg)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert set(tensorboard_steps(tmp_path)) >= {1, 2, 3, 4}  # flushed at checkpoints 2 and 4
    newest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    result = train(load_config(TINY, [f"workdir={tmp_path}", *QUICK, f"steps={newest + 1}", "checkpoint_every=2"]))
    assert result.step == newest + 1 and list(result.losses) == [newest + 1]
