"""ControlNet training on fake CPU devices: only the branch trains (optimizer state for it alone, the base bitwise
unchanged), 8 devices with FSDP equal 1, and `python -m train.controlnet` end to end (resume, export, bad data)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.sharding import device_batch, make_mesh
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.training.controlnet import ControlNetTraining, load_config
from pixart_jax.training.data import encode_example, stack_examples
from pixart_jax.training.features import ShardWriter
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet_jax
from pixart_jax.weights.transformer import save_jax
from tests.helpers.paths import CONFIGS
from train.controlnet import main

TINY = str(CONFIGS / "controlnet_tiny.yaml")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random tiny base (every parameter drawn: a fresh PixArt's zero output layer would give zero gradients)."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    save_jax(redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(3)), 3), str(path))
    return str(path)


def setup(base_dir, devices, mesh_shape):
    program = ControlNetTraining(load_config(TINY, ["workdir=unused", f"model.init_from={base_dir}"]))
    cfg = program.cfg
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:devices])
    model = program.model()
    redraw_nnx(model.after_proj, 5, scale=0.02)  # a branch that already feeds the base: every gradient flows
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
    step = program.step(model, mesh)
    batch = stack_examples(synthetic_examples(cfg.data.batch_size, seed=1, caption_channels=32, control=True))
    return mesh, state, step, batch


def run_steps(base_dir, devices, mesh_shape, count=2):
    mesh, state, step, batch = setup(base_dir, devices, mesh_shape)
    before = jax.tree.map(np.array, {k: state[k] for k in ("params", "frozen")})
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(count):
            state, metrics = step(state, device_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
            assert float(metrics["grad_norm"]) > 0
    return losses, before, state


def leaves_equal(a, b):
    return all(np.array_equal(x, np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_only_the_branch_trains(base_dir):
    losses, before, state = run_steps(base_dir, 1, (1, 1))
    assert leaves_equal(before["frozen"], state["frozen"])  # the base, bitwise
    assert set(state["params"]) == {"copies", "before_proj", "after_proj"} and set(state["frozen"]) == {"base"}
    for name in ("copies", "before_proj", "after_proj"):
        assert not leaves_equal(before["params"][name], state["params"][name]), name
    moments = [leaf for leaf in jax.tree.leaves(state["opt"]) if np.ndim(leaf) > 0]
    branch = jax.tree.leaves(state["params"])
    assert sorted(m.shape for m in moments) == sorted([p.shape for p in branch] * 2)  # Adam's mu and nu, branch only
    assert "ema" not in state


def test_eight_devices_with_fsdp_equal_one_device(base_dir):
    ref_losses, _, ref = run_steps(base_dir, 1, (1, 1))
    losses, _, state = run_steps(base_dir, 8, (4, 2))
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(state["params"])))
    print(f"ControlNet 1 device vs 8 (data 4 x fsdp 2), 2 steps: losses {np.round(ref_losses, 6)}, max loss diff "
          f"{np.abs(np.subtract(losses, ref_losses)).max():.2e}, branch params {diff:.2e}")
    assert np.abs(np.subtract(losses, ref_losses)).max() < 1e-6 and diff < 1e-4
    assert state["params"]["copies"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    assert state["frozen"]["base"]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    assert state["params"]["after_proj"]["kernel"].sharding.spec == P(None, "fsdp", None)


def test_controlnet_command_trains_resumes_and_exports(base_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    args = [TINY, f"workdir={workdir}", f"model.init_from={base_dir}", "logging.progress=false"]
    assert main(args + ["steps=2"]) == 0
    assert main(args + ["steps=3"]) == 0
    assert "resumed from checkpoint 2" in capsys.readouterr().out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    trained = load_controlnet(str(workdir / "export" / "controlnet"))
    base = nnx.state(load_controlnet(base=base_dir, copies=1).base)
    assert trained.num_copies == 1 and leaves_equal(jax.tree.leaves(base), jax.tree.leaves(nnx.state(trained.base)))
    assert main(args + ["sample.every=1"]) == 2
    records = tmp_path / "records"  # features written without --control
    records.mkdir()
    writer = ShardWriter(str(records), 0, 8, lambda count: None)
    for i, e in enumerate(synthetic_examples(8, seed=0, caption_channels=32)):
        writer.write(str(i), e["bucket"], encode_example(
            key=str(i), caption=e["caption"][:e["mask"].sum()], mean=e["mean"], std=e["std"], img_hw=e["img_hw"],
            bucket=e["bucket"], max_length=120))
    writer.close()
    capsys.readouterr()
    assert main(args + [f"workdir={tmp_path / 'other'}", f"data.source={records}"]) == 2
    assert "holds no control latents" in capsys.readouterr().err


def test_a_controlnet_continued_from_a_checkpoint_gets_the_model_options(base_dir, tmp_path):
    """controlnet.init_from: the loaded ControlNet runs with the configured model.remat, activation_dtype and
    attention, as a new one copied from the base does (on TPU: splash attention, the planned activation memory)."""
    save_controlnet_jax(load_controlnet(base=base_dir, copies=1), str(tmp_path / "controlnet"))
    options = ["model.remat=block", "model.activation_dtype=bfloat16", "model.attention=xla"]
    for init in ([f"model.init_from={base_dir}"], [f"controlnet.init_from={tmp_path / 'controlnet'}"]):
        cfg = load_config(TINY, ["workdir=unused", *init, *options])
        base = ControlNetTraining(cfg).model().base
        assert (base.remat, base.activation_dtype, base.attention_kernel) == ("block", jnp.bfloat16, "xla"), init
