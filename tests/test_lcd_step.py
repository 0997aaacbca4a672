"""The LCD train step on fake CPU devices (mesh equivalence, FSDP placement, EMA target, frozen teacher) and
`python -m train.lcm` end to end (metrics, export loadable as a transformer and an LCM sampler)."""
import json
import pathlib

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.checkpoints import load_transformer
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.samplers.lcm import LCM
from train.data import stack_examples
from train.lcd_step import init_lcd_state
from train.lcm import Distillation, load_config, main
from train.sharding import device_batch, make_mesh
from train.step import build_model, make_optimizer, split_model
from train.synthetic import synthetic_examples

LCM_TINY = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "lcm_tiny.yaml")


def perturbed(model):
    """The model with noise added to every parameter: a fresh PixArt's zero-initialised output layer predicts
    ε = 0 everywhere, which makes the LCD loss ~0 and its gradient pure rounding noise (that Adam, eps 1e-10, would
    turn into full-size steps)."""
    graphdef, params, buffers = split_model(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy), buffers)


def setup(devices, mesh_shape):
    """(mesh, state, step, batch) for the tiny LCD run on `devices` fake devices shaped (data, fsdp)."""
    cfg = load_config(LCM_TINY, ["workdir=unused", "optimizer.warmup_steps=0", "optimizer.lr=1e-3"])
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:devices])
    model = perturbed(build_model(cfg.model, cfg.seed))
    tx, schedule = make_optimizer(cfg.optimizer, cfg.data.batch_size)
    with jax.set_mesh(mesh):
        state, shardings = init_lcd_state(model, tx, cfg.seed, mesh, cfg.mesh.rules)
    step = Distillation.make_step(cfg, split_model(model)[0], tx, schedule, shardings, mesh)
    examples = synthetic_examples(cfg.data.batch_size, seed=1, caption_channels=model.cfg.caption_channels,
                                  max_tokens=model.cfg.max_tokens)
    return mesh, state, step, stack_examples(examples)


def run_steps(devices, mesh_shape, count=2):
    """(losses, host copies of the state after `count` steps, the final state)."""
    mesh, state, step, batch = setup(devices, mesh_shape)
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(count):
            state, metrics = step(state, device_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
    host = {k: jax.tree.map(np.asarray, state[k]) for k in ("teacher", "student", "target")}
    return losses, host, state


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_eight_devices_with_fsdp_equal_one_device():
    ref_losses, ref, _ = run_steps(1, (1, 1))
    losses, got, state = run_steps(8, (4, 2))
    loss_diff = float(np.abs(np.subtract(losses, ref_losses)).max())
    student_diff, target_diff = max_diff(got["student"], ref["student"]), max_diff(got["target"], ref["target"])
    print(f"LCD 1 device vs 8 (data 4 x fsdp 2), 2 steps: losses {np.round(ref_losses, 6)}, max loss diff "
          f"{loss_diff:.2e}, student {student_diff:.2e}, target {target_diff:.2e}")
    assert loss_diff < 1e-6
    # Adam divides by √ν: a rounding-level gradient difference where the gradient is ~0 moves a weight by a
    # fraction of one lr (1e-3) step, which bounds the parameter differences
    assert student_diff < 1e-4 and target_diff < 1e-5
    for copy in ("teacher", "student", "target"):  # FSDP shards all three copies
        assert state[copy]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    assert state["buffers"]["y_embedding"].sharding.spec == P(None, None)


def test_target_is_an_ema_of_the_student_and_the_teacher_is_frozen():
    mesh, state, step, batch = setup(1, (1, 1))
    before = {k: jax.tree.map(np.array, state[k]) for k in ("teacher", "target")}
    with jax.set_mesh(mesh):
        state, metrics = step(state, device_batch(batch, mesh))
    after = {k: jax.tree.map(np.asarray, state[k]) for k in ("teacher", "student", "target")}
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert max_diff(after["student"], before["target"]) > 0  # the student moved
    expected = jax.tree.map(lambda old, new: 0.95 * old + 0.05 * new, before["target"], after["student"])
    assert max_diff(after["target"], expected) < 1e-7
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["teacher"]),
                                                    jax.tree.leaves(before["teacher"])))


def test_lcm_command_trains_resumes_and_exports(tmp_path, capsys):
    workdir = tmp_path / "lcm"
    args = [LCM_TINY, f"workdir={workdir}", "logging.progress=false"]
    assert main(args + ["steps=2"]) == 0
    assert main(args + ["steps=3"]) == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    model = load_transformer(str(workdir / "export" / "transformer"))
    assert model.cfg.depth == 2 and model.cfg.hidden_size == 48
    assert isinstance(from_scheduler_config(str(workdir / "export")), LCM)
    assert main(args + ["sample.every=1"]) == 2  # sample grids are a pre-training feature
