"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1) train, save, restore and go on with the same losses
and weights as one process with 8 devices."""
import json
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp

from pixart_jax.sharding import make_mesh
from pixart_jax.training.config import load_config
from pixart_jax.training.pretraining import Pretraining, train
from tests.helpers.commands import ROOT, start_module

OVERRIDES = ["checkpoint_every=3", "sample.every=0", "logging.progress=false", "data.synthetic_examples=16",
             "data.synthetic_buckets=[1.0]"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(workdir, steps):
    port = free_port()
    procs = [start_module("train.pretrain", ROOT / "configs" / "tiny.yaml", f"workdir={workdir}", f"steps={steps}",
                          *OVERRIDES, f"distributed.coordinator=127.0.0.1:{port}", "distributed.num_processes=2",
                          f"distributed.process_id={i}", devices=4) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_match_one_process(tmp_path):
    multi = tmp_path / "multi"
    run_two_processes(multi, steps=3)
    outs = run_two_processes(multi, steps=5)
    assert "resumed from checkpoint 3" in outs[0] and "resumed from checkpoint 3" in outs[1]

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"workdir={tmp_path / 'single'}", "steps=5", *OVERRIDES])
    single = train(cfg)
    multi_losses, single_losses = losses(multi), losses(tmp_path / "single")
    assert sorted(multi_losses) == [1, 2, 3, 4, 5]
    loss_diff = max(abs(multi_losses[s] - single_losses[s]) for s in single_losses)

    program = Pretraining(cfg)
    target, _ = program.abstract_state(program.model(), make_mesh(8, 1))
    with ocp.StandardCheckpointer() as ckpt:
        saved = ckpt.restore(multi / "checkpoints" / "5" / "state", target)
    param_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                     for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(single.state)))
    print(f"multi-host: 2 processes x 4 devices vs 1 x 8, steps 1-5 (saved at 3, restored): max loss diff "
          f"{loss_diff:.2e}, max state diff {param_diff:.2e}")
    assert loss_diff < 1e-6
    assert param_diff < 1e-5
