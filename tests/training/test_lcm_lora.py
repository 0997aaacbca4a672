"""LCM-LoRA and PCM-LoRA (`train.lcm` / `train.pcm` with a `lora:` section) on fake CPU devices: only the adapters
train (the one frozen base bitwise unchanged), the teacher is the base with the adapters off, the target is an EMA of
the adapters, 8 devices with FSDP equal 1, a resumed run equals an uninterrupted one, the exported PEFT folder loads
back to the trained model, the step lowers from shapes alone (train.plan), bad settings are refused up front."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.planning.training import abstract_batch
from pixart_jax.samplers import LCM, from_scheduler_config
from pixart_jax.sharding import make_mesh
from pixart_jax.training import lcm, pcm
from pixart_jax.training.config import ConfigError
from pixart_jax.training.consistency_networks import AdapterCopies
from pixart_jax.training.lora_program import adapted_model
from pixart_jax.training.registry import program_for
from pixart_jax.weights.lora import load_lora
from pixart_jax.weights.transformer import load_transformer
from tests.helpers import transformer_io
from tests.helpers.paths import CONFIGS
from tests.helpers.steps import run_program_steps
from tests.helpers.trees import max_diff, save_random_tiny
from train import lcm as lcm_command
from train import pcm as pcm_command

LCM_LORA = str(CONFIGS / "lcm_lora_tiny.yaml")
PCM_TINY = str(CONFIGS / "pcm_tiny.yaml")
QUICK = ["logging.progress=false", "data.synthetic_buckets=[1.0]", "checkpoint.async_save=false"]
STEPS = ["optimizer.warmup_steps=0", "optimizer.lr=1e-3"]  # lr 1e-3 from the first step: the adapters move


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("base") / "tiny")


def lcm_config(base_dir, workdir, *extra):
    return lcm.load_config(LCM_LORA, [f"workdir={workdir}", f"model.init_from={base_dir}", *QUICK, *extra])


def base_params(base_dir):
    return nnx.to_pure_dict(nnx.state(load_transformer(base_dir), nnx.Param))


def host(state):
    return {k: jax.tree.map(np.array, state[k]) for k in ("frozen", "student", "target")}


def run_steps(base_dir, devices, mesh_shape):
    """(losses, [host copies of frozen / student / target before and after each of 2 steps], the final state) of
    the tiny LCM-LoRA step on `devices` fake devices shaped (data, fsdp)."""
    return run_program_steps(lcm.program(lcm_config(base_dir, "unused", *STEPS)), devices, mesh_shape,
                             snapshot=host)


@pytest.fixture(scope="module")
def one_device(base_dir):
    return run_steps(base_dir, 1, (1, 1))


def test_only_the_adapters_train_and_the_target_is_their_ema(base_dir, one_device):
    _, snapshots, state = one_device
    assert sorted(state) == ["buffers", "frozen", "opt", "rng", "step", "student", "target"]  # no teacher copy
    base = base_params(base_dir)
    for snapshot in snapshots:
        assert max_diff(snapshot["frozen"], base) == 0  # the base, bitwise, before and after every step
    (_, first, second) = snapshots
    assert max_diff(first["student"], snapshots[0]["student"]) > 0 and max_diff(second["student"], first["student"]) > 0
    for before, after in ((snapshots[0], first), (first, second)):
        expected = jax.tree.map(lambda old, new: 0.95 * old + 0.05 * new, before["target"], after["student"])
        assert max_diff(after["target"], expected) < 1e-7  # leaf-wise, over the adapters only
    adapters = jax.tree.leaves(state["student"])
    moments = [leaf for leaf in jax.tree.leaves(state["opt"]) if np.ndim(leaf) > 0]
    assert sorted(m.shape for m in moments) == sorted([a.shape for a in adapters] * 2)  # Adam's mu and nu only


def test_the_teacher_is_the_base_with_the_adapters_off(base_dir, one_device):
    """On the same inputs the teacher the update runs equals load_transformer(model.init_from) bitwise, while the
    student, its B no longer zero after two steps, differs."""
    *_, state = one_device
    program = lcm.program(lcm_config(base_dir, "unused"))
    copies, x = AdapterCopies.of(program.model()), transformer_io.inputs(2, 8, 8)
    state = jax.device_get(state)
    assert any(np.abs(b).max() > 0 for b in jax.tree.leaves(state["student"]))
    teacher = transformer_io.run_ours(copies.teacher(state), x)
    base = transformer_io.run_ours(load_transformer(base_dir), x)
    student = transformer_io.run_ours(copies.model(state, state["student"]), x)
    print(f"LCM-LoRA teacher vs base: max {np.abs(teacher - base).max():.1e}; student vs base: max "
          f"{np.abs(student - base).max():.2e}")
    np.testing.assert_array_equal(teacher, base)
    assert np.abs(student - base).max() > 1e-4


def test_eight_devices_with_fsdp_equal_one_device(base_dir, one_device):
    ref_losses, ref, _ = one_device
    losses, got, state = run_steps(base_dir, 8, (4, 2))
    loss_diff = float(np.abs(np.subtract(losses, ref_losses)).max())
    student_diff, target_diff = max_diff(got[-1]["student"], ref[-1]["student"]), max_diff(got[-1]["target"],
                                                                                           ref[-1]["target"])
    print(f"LCM-LoRA 1 device vs 8 (data 4 x fsdp 2), 2 steps: losses {np.round(ref_losses, 6)}, max loss diff "
          f"{loss_diff:.2e}, student {student_diff:.2e}, target {target_diff:.2e}")
    assert loss_diff < 1e-6
    # as the LCD step test: Adam turns rounding-level gradient differences into a fraction of one lr (1e-3) step
    assert student_diff < 1e-4 and target_diff < 1e-5
    assert state["frozen"]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    for copy in ("student", "target"):  # the adapters take the kernel's axes
        assert state[copy]["blocks"]["mlp"]["fc1"]["lora"]["adapters"]["default_0"][0]["a"].sharding.spec == P(
            None, "fsdp", None)


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """{"whole": 4 steps in one run, "first": 2 steps, "resumed": resumed to 4}: lcm.distill results (on the
    8-device test's mesh and settings: its compiled step is reused)."""
    root = tmp_path_factory.mktemp("runs")
    run = lambda workdir, steps: lcm.distill(lcm_config(  # noqa: E731
        base_dir, root / workdir, f"steps={steps}", "checkpoint_every=2", "mesh.fsdp=2", *STEPS))
    whole, first, resumed = run("whole", 4), run("resumed", 2), run("resumed", 4)
    return {"whole": whole, "first": first, "resumed": resumed, "root": root}


def test_a_resumed_run_equals_an_uninterrupted_one(runs):
    whole, first, resumed = runs["whole"], runs["first"], runs["resumed"]
    assert {**first.losses, **resumed.losses} == whole.losses and list(resumed.losses) == [3, 4]
    for key in ("student", "target", "opt"):
        assert max_diff(whole.state[key], resumed.state[key]) == 0, key


def test_the_exported_adapter_loads_back_to_the_target(base_dir, runs):
    """WORKDIR/lora is the EMA target's adapter as a PEFT folder, WORKDIR/export the LCM scheduler config."""
    workdir = runs["root"] / "whole"
    config = json.loads((workdir / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 4, base_dir)
    assert isinstance(from_scheduler_config(str(workdir / "export")), LCM)
    assert not (workdir / "export" / "transformer").exists()
    # on the host, as the loaded model: FSDP-sharded weights would sum the kernels' inputs in another order
    x, on_host = transformer_io.inputs(2, 8, 8), jax.device_get(runs["whole"].state)
    target = transformer_io.run_ours(adapted_model(dataclasses.replace(runs["whole"], state=on_host), "target"), x)
    loaded = transformer_io.run_ours(load_lora(load_transformer(base_dir), str(workdir / "lora")), x)
    np.testing.assert_array_equal(loaded, target)


def test_pcm_lora_command_with_the_adversarial_loss(base_dir, tmp_path, capsys):
    """`train.pcm` with lora.* overrides: a discriminator step then a generator step on the adapter-off base's
    features; the adapter is exported."""
    workdir = tmp_path / "pcm"
    args = [PCM_TINY, f"workdir={workdir}", f"model.init_from={base_dir}", "lora.rank=4", "lora.alpha=4",
            "pcm.adversarial=true", "steps=2", *QUICK, *STEPS]
    assert pcm_command.main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["discriminator_step"] for r in records] == [1.0, 0.0]
    assert all(np.isfinite(r["loss"]) and r["adversarial"] > 0 for r in records)
    x = transformer_io.inputs(2, 8, 8)
    adapted = transformer_io.run_ours(load_lora(load_transformer(base_dir), str(workdir / "lora")), x)
    assert np.abs(adapted - transformer_io.run_ours(load_transformer(base_dir), x)).max() > 0


def test_the_lcm_lora_step_lowers_from_shapes_alone():
    """What train.plan does before its TPU compile: the registry's program of the config, its adapted model of the
    preset's shapes (nothing loaded), the abstract state (one base, no teacher copy), the step lowered."""
    name, entry = program_for(CONFIGS / "lcm_lora_tiny.yaml")
    cfg = entry.load_config(CONFIGS / "lcm_lora_tiny.yaml", ["workdir=unused", "mesh.fsdp=2"])
    program = entry.program(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None)))
    assert name == "lcm" and isinstance(program, lcm.LoRALCMDistillation)
    model, mesh = nnx.eval_shape(program.model), make_mesh(-1, 2)
    state, _ = program.abstract_state(model, mesh)
    assert sorted(state) == ["buffers", "frozen", "opt", "rng", "step", "student", "target"]
    batch = abstract_batch(program.batch_shapes(model.cfg, (16, 16)), cfg.data.batch_size, mesh)
    with jax.set_mesh(mesh):
        assert "dot_general" in program.step(model, mesh).lower(state, batch).as_text()


@pytest.mark.parametrize("override, message", [
    ("model.init_from=null", r"lora needs model.init_from"),
    ("lora.rank=0", r"lora.rank must be at least 1, got 0"),
    ("lora.targets=[to_q,to_qq]", r"unknown lora.targets \['to_qq'\]"),
    ("lora.dropout=0.1", r"lora.dropout 0.1 is not supported by (LCD|PCM) training"),
    ("sample.every=5", r"sample.every must be 0"),
])
@pytest.mark.parametrize("command, config", [(lcm_command, LCM_LORA), (pcm_command, PCM_TINY)], ids=["lcm", "pcm"])
def test_bad_settings_are_refused_up_front(base_dir, tmp_path, capsys, command, config, override, message):
    args = [config, f"workdir={tmp_path / 'run'}", f"model.init_from={base_dir}", "lora.rank=4", override]
    with pytest.raises(ConfigError, match=message):
        (lcm if command is lcm_command else pcm).load_config(args[0], args[1:])
    assert command.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "run").exists()
