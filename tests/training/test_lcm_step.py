"""The LCD train step on fake CPU devices (mesh equivalence, FSDP placement, EMA target, frozen teacher) and
`python -m train.lcm` end to end (metrics, export loadable as a transformer and an LCM sampler)."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pixart_jax.pipelines.prompts import encode_prompt, load_tokenizer
from pixart_jax.samplers import from_scheduler_config
from pixart_jax.samplers.lcm import LCM
from pixart_jax.sharding import device_batch, make_mesh
from pixart_jax.testing.stand_ins import save_t5, save_tokenizer
from pixart_jax.training.config import ConfigError
from pixart_jax.training.consistency_networks import FullCopies
from pixart_jax.training.data import stack_examples
from pixart_jax.training.lcm import LCMDistillation, empty_prompt, load_config
from pixart_jax.training.lcm_step import lcm_update
from pixart_jax.training.step import TrainStep
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.transformer import load_transformer
from tests.helpers.commands import run_module
from tests.helpers.paths import CONFIGS
from tests.helpers.trees import max_diff, perturbed
from train.lcm import main

LCM_TINY = str(CONFIGS / "lcm_tiny.yaml")


def setup(devices, mesh_shape):
    """(mesh, state, step, batch) for the tiny LCD run on `devices` fake devices shaped (data, fsdp)."""
    program = LCMDistillation(load_config(LCM_TINY, ["workdir=unused", "optimizer.warmup_steps=0",
                                                     "optimizer.lr=1e-3"]))
    cfg = program.cfg
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:devices])
    model = perturbed(program.model())
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
    step = program.step(model, mesh)
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
    run = run_module("train.lcm", *args, "steps=2")  # as the README runs it
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(args + ["steps=3"]) == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    model = load_transformer(str(workdir / "export" / "transformer"))
    assert model.cfg.depth == 2 and model.cfg.hidden_size == 48
    assert isinstance(from_scheduler_config(str(workdir / "export")), LCM)
    assert main(args + ["sample.every=1"]) == 2  # sample grids are a pre-training feature


def test_t5_null_caption_is_padded_with_masked_tokens():
    """lcm.null_caption "t5": the teacher's uncond branch gets the (T, C) caption padded to L tokens with only T
    valid. Equal to the y_embedding mode on a model whose y_embedding is that padded caption, for prompts whose
    own masks are those T tokens; a different null caption changes the loss."""
    mesh, state, _, batch = setup(1, (1, 1))
    program = LCMDistillation(load_config(LCM_TINY, ["workdir=unused"]))
    length, channels = state["buffers"]["y_embedding"].shape
    null = np.asarray(jax.random.normal(jax.random.key(4), (3, channels)))
    padded = np.concatenate([null, np.zeros((length - 3, channels), np.float32)])
    batch = dict(batch, mask=np.broadcast_to(np.arange(length) < 3, batch["mask"].shape).astype(np.int32))
    model = perturbed(program.model())
    model.y_embedding.set_value(jax.numpy.asarray(padded))

    def loss(null_caption):
        settings = dataclasses.replace(program.settings, null_caption=null_caption)
        with jax.set_mesh(mesh):
            fresh, shardings = program.state(model, mesh)
            lcm = TrainStep(lcm_update(FullCopies.of(model), program.optimizer, settings), shardings, mesh)
            return float(lcm(fresh, device_batch(batch, mesh))[1]["loss"])

    t5_mode, y_embedding_mode = loss(null), loss(None)
    print(f"T5('') mode {t5_mode:.8f}, y_embedding mode on the same caption {y_embedding_mode:.8f}")
    assert t5_mode == y_embedding_mode
    assert loss(null[:2]) != t5_mode
    with pytest.raises(ValueError, match="does not fit captions"):
        loss(np.zeros((length + 1, channels), np.float32))


def test_lcm_command_with_the_t5_empty_prompt(tmp_path):
    """`lcm.null_caption=t5 lcm.text_encoder=DIR` runs; its null caption is the first token of the pipeline's T5
    encoding of the negative prompt "" (our encode_prompt, padded to 120 tokens)."""
    t5_dir, t5 = save_t5(tmp_path / "t5")
    save_tokenizer(str(tmp_path / "t5"))
    null = empty_prompt(t5_dir, t5_dir)
    pipeline = encode_prompt("a cat", "", tokenizer=load_tokenizer(t5_dir), text_encoder=t5)
    assert null.shape == (1, 32) and int(pipeline.negative_mask.sum()) == 1
    np.testing.assert_allclose(null[0], np.asarray(pipeline.negative_embeds[0, 0]), atol=1e-6)
    args = [LCM_TINY, f"workdir={tmp_path / 'lcm'}", "logging.progress=false", "steps=2", "lcm.null_caption=t5",
            f"lcm.text_encoder={t5_dir}"]
    assert main(args) == 0
    with pytest.raises(ConfigError, match="needs lcm.text_encoder"):
        load_config(LCM_TINY, ["lcm.null_caption=t5"])
