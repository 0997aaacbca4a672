"""The PCM train step on fake CPU devices (8 devices vs 1, FSDP placement of every network, EMA target, frozen
teacher, alternating discriminator / generator updates) and `python -m train.pcm` end to end (metrics, exact resume,
export loadable as a transformer and a PCM sampler, bad configs)."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pixart_jax.samplers import PCM, from_scheduler_config
from pixart_jax.sharding import device_batch, make_mesh
from pixart_jax.training.config import ConfigError
from pixart_jax.training.data import stack_examples
from pixart_jax.training.pcm import PCMDistillation, load_config
from pixart_jax.training.state import split_model
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.transformer import load_transformer
from tests.helpers.paths import CONFIGS
from tests.helpers.trees import max_diff, perturbed
from train.pcm import main

PCM_TINY = str(CONFIGS / "pcm_tiny.yaml")
NETWORKS = ("teacher", "student", "target", "disc")


def setup(devices, mesh_shape, *overrides):
    """(mesh, state, step, batch) for the tiny PCM run on `devices` fake devices shaped (data, fsdp)."""
    # Adam eps 1e-6 (the config: 1e-10) keeps rounding-level gradients from becoming whole lr steps (g / (|g| + eps))
    program = PCMDistillation(load_config(PCM_TINY, ["workdir=unused", "optimizer.warmup_steps=0",
                                                     "optimizer.lr=1e-3", "optimizer.eps=1e-6", *overrides]))
    cfg = program.cfg
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:devices])
    model = perturbed(program.model())
    step = program.step(model, mesh)  # before the state: a program answers in any order
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
    examples = synthetic_examples(cfg.data.batch_size, seed=1, caption_channels=model.cfg.caption_channels,
                                  max_tokens=model.cfg.max_tokens)
    return mesh, state, step, stack_examples(examples)


def host(state):
    return {k: jax.tree.map(np.array, state[k]) for k in NETWORKS if k in state}


def run_steps(devices, mesh_shape, *overrides, count=2):
    """(per-step metrics, host copies of the networks after `count` steps, the final state)."""
    mesh, state, step, batch = setup(devices, mesh_shape, *overrides)
    metrics = []
    with jax.set_mesh(mesh):
        for _ in range(count):
            state, m = step(state, device_batch(batch, mesh))
            metrics.append({k: float(v) for k, v in m.items()})
    return metrics, host(state), state


def test_eight_devices_with_fsdp_equal_one_device():
    """With the adversarial loss: a discriminator step, then a generator step (through the teacher's features)."""
    overrides = ("pcm.adversarial=true",)
    ref_metrics, ref, _ = run_steps(1, (1, 1), *overrides)
    metrics, got, state = run_steps(8, (4, 2), *overrides)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(metrics, ref_metrics))
    diffs = {k: max_diff(got[k], ref[k]) for k in ref}
    print(f"PCM 1 device vs 8 (data 4 x fsdp 2), 2 steps: losses "
          f"{[round(m['loss'], 9) for m in ref_metrics]}, max loss diff {loss_diff:.2e}, params {diffs}")
    assert loss_diff < 1e-6 * max(1.0, max(m["loss"] for m in ref_metrics))
    adv_diff = max(abs(a["adversarial"] - b["adversarial"]) for a, b in zip(metrics, ref_metrics))
    assert adv_diff < 1e-5, adv_diff
    assert all(d < 1e-5 for d in diffs.values()), diffs  # after two lr-1e-3 steps
    for network in ("teacher", "student", "target"):  # FSDP shards every copy
        assert state[network]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    assert state["disc"]["heads"]["conv_in"]["kernel"].sharding.spec == P(None, "fsdp", None)


def test_ema_target_follows_the_student_and_the_teacher_is_frozen():
    mesh, state, step, batch = setup(1, (1, 1))
    before = host(state)
    with jax.set_mesh(mesh):
        state, metrics = step(state, device_batch(batch, mesh))
    after = host(state)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert max_diff(after["student"], before["student"]) > 0
    expected = jax.tree.map(lambda old, new: 0.95 * old + 0.05 * new, before["target"], after["student"])
    assert max_diff(after["target"], expected) < 1e-7
    assert max_diff(after["teacher"], before["teacher"]) == 0


def test_stop_gradient_student_target_keeps_no_copy():
    """The released recipe's variant: no target copy; here with the unguided teacher and null captions."""
    mesh, state, step, batch = setup(1, (1, 1), "pcm.target=student", "pcm.export=student", "pcm.guidance=none")
    assert "target" not in state
    with jax.set_mesh(mesh):
        state, metrics = step(state, device_batch(batch, mesh))
    assert "target" not in state and np.isfinite(float(metrics["loss"]))


def test_adversarial_steps_alternate_between_heads_and_student():
    """Even optimizer steps update only the discriminator heads (the student gets no update), odd ones only the
    student (the heads get none); the teacher never moves (consistency.md §4.3.6)."""
    mesh, state, step, batch = setup(1, (1, 1), "pcm.adversarial=true")
    snapshots, metrics = [host(state)], []
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, m = step(state, device_batch(batch, mesh))
            snapshots.append(host(state))
            metrics.append(m)
    assert [float(m["discriminator_step"]) for m in metrics] == [1.0, 0.0, 1.0]
    for i, moved in enumerate(("disc", "student", "disc")):
        still = {"disc": "student", "student": "disc"}[moved]
        assert max_diff(snapshots[i + 1][moved], snapshots[i][moved]) > 0, (i, moved)
        assert max_diff(snapshots[i + 1][still], snapshots[i][still]) == 0, (i, still)
        assert max_diff(snapshots[i + 1]["teacher"], snapshots[0]["teacher"]) == 0
    assert all(np.isfinite(float(m["adversarial"])) and float(m["adversarial"]) > 0 for m in metrics)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_pcm_command_resumes_exactly_and_exports(tmp_path, capsys):
    """Interrupted after 2 steps and resumed to 4 = 4 steps straight (adversarial: the resumed run continues with
    the generator step), bit for bit; the export loads as a transformer and as the PCM sampler."""
    args = [PCM_TINY, "logging.progress=false", "pcm.adversarial=true", "optimizer.warmup_steps=0"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert main(args + [f"workdir={resumed}", "steps=2"]) == 0
    assert main(args + [f"workdir={resumed}", "steps=4"]) == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    assert main(args + [f"workdir={straight}", "steps=4"]) == 0
    keys = ("step", "loss", "grad_norm", "adversarial", "discriminator_step")
    assert [{k: r[k] for k in keys} for r in records(resumed)] == [{k: r[k] for k in keys} for r in records(straight)]
    exported = [load_transformer(str(w / "export" / "transformer")) for w in (resumed, straight)]
    assert exported[0].cfg.depth == 2
    assert max_diff(jax.tree.leaves(split_model(exported[0])[1]), jax.tree.leaves(split_model(exported[1])[1])) == 0
    sampler = from_scheduler_config(str(resumed / "export"))
    assert sampler == PCM(schedule=sampler.schedule, phases=4) and sampler.timesteps(4).tolist() == [999, 749, 499, 249]


@pytest.mark.parametrize("override, message", [
    ("pcm.phases=41", r"pcm.phases must be in \[1, pcm.num_ddim_timesteps = 40\]"),
    ("pcm.num_ddim_timesteps=30", "must divide 1000"),
    ("pcm.target=student", "pcm.export 'target' needs pcm.target 'ema'"),
    ("model.caption_dropout=0.1", "model.caption_dropout must be 0"),
    ("pcm.guidance=cfg", "guidance"),
    ("pcm.guidance_min=5", "guidance_min must be <= pcm.guidance_max"),
])
def test_bad_configs_are_refused_before_any_compute(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PCM_TINY, ["workdir=unused", override])
