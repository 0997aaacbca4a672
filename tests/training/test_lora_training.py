"""LoRA fine-tuning with `python -m train.pretrain` and a `lora:` section, on fake CPU devices: only the adapters
train (the base bitwise unchanged, optimizer state for the adapters alone), 8 devices with FSDP equal 1, a resumed
run equals an uninterrupted one, the exported PEFT folder loads back to the trained model, bad settings are refused
up front."""
import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.models.lora import LoRAParam
from pixart_jax.planning.training import abstract_batch
from pixart_jax.sharding import make_mesh
from pixart_jax.training import controlnet, pretraining
from pixart_jax.training.checkpoints import ResumeMismatchError
from pixart_jax.training.config import ConfigError, load_config
from pixart_jax.training.lora_program import adapted_model
from pixart_jax.training.pretraining import LoRAPretraining, train
from pixart_jax.weights.lora import load_lora
from pixart_jax.weights.transformer import load_transformer
from tests.helpers import transformer_io
from tests.helpers.paths import CONFIGS
from tests.helpers.steps import run_program_steps
from tests.helpers.trees import save_random_tiny
from train.pretrain import main

TINY = str(CONFIGS / "tiny.yaml")
LORA = ["lora.rank=4", "lora.alpha=8", "sample.every=0", "logging.progress=false", "data.synthetic_buckets=[1.0]",
        "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("base") / "tiny")


def lora_config(base_dir, workdir, *extra):
    return load_config(TINY, [f"workdir={workdir}", f"model.init_from={base_dir}", *LORA, *extra])


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """{"whole": 4 steps in one run, "resumed": 2 steps, then resumed to 4}: loop.train results."""
    root = tmp_path_factory.mktemp("runs")
    whole = train(lora_config(base_dir, root / "whole", "steps=4", "checkpoint_every=2"))
    first = train(lora_config(base_dir, root / "resumed", "steps=2", "checkpoint_every=2"))
    resumed = train(lora_config(base_dir, root / "resumed", "steps=4", "checkpoint_every=2"))
    return {"whole": whole, "first": first, "resumed": resumed, "root": root}


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_only_the_adapters_train(base_dir, runs):
    state = runs["whole"].state
    base = nnx.to_pure_dict(nnx.state(load_transformer(base_dir), nnx.Param))
    assert leaves_equal(base, state["frozen"])  # the base, bitwise
    adapters = jax.tree.leaves(state["params"])
    assert adapters and all(np.abs(np.asarray(a)).max() > 0 for a in adapters)  # every B left zero
    untrained = nnx.to_pure_dict(nnx.state(LoRAPretraining(lora_config(base_dir, "unused")).model(), LoRAParam))
    assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(untrained), adapters, strict=True))
    moments = [leaf for leaf in jax.tree.leaves(state["opt"]) if np.ndim(leaf) > 0]
    assert sorted(m.shape for m in moments) == sorted([a.shape for a in adapters] * 2)  # Adam's mu and nu only
    assert "ema" not in state


def test_checkpoints_hold_the_adapters_and_resume_exactly(runs):
    whole, first, resumed = runs["whole"], runs["first"], runs["resumed"]
    assert {**first.losses, **resumed.losses} == whole.losses and list(resumed.losses) == [3, 4]
    assert leaves_equal(whole.state["params"], resumed.state["params"])
    assert leaves_equal(whole.state["opt"], resumed.state["opt"])
    saved = ocp.StandardCheckpointer().metadata(str(runs["root"] / "resumed" / "checkpoints" / "2" / "state"))
    assert sorted(saved.item_metadata.keys()) == ["buffers", "opt", "params", "rng", "step"]  # no base weights


def test_a_lora_run_resumes_only_on_its_own_base(base_dir, runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(base_dir, other)  # the same weights under another name: the run cannot know they are the same
    with pytest.raises(ResumeMismatchError, match="model.init_from: .* in the checkpoint, .*other.* now"):
        train(lora_config(str(other), runs["root"] / "resumed", "steps=6", "checkpoint_every=2"))


def test_the_exported_peft_folder_loads_back_to_the_trained_model(base_dir, runs):
    folder = runs["root"] / "whole" / "lora"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    x = transformer_io.inputs(2, 8, 8)
    trained = transformer_io.run_ours(adapted_model(runs["whole"]), x)
    loaded = transformer_io.run_ours(load_lora(load_transformer(base_dir), str(folder)), x)
    base = transformer_io.run_ours(load_transformer(base_dir), x)
    print(f"LoRA export: |trained - loaded| max {np.abs(trained - loaded).max():.2e}, |trained - base| max "
          f"{np.abs(trained - base).max():.2e}")
    assert np.abs(trained - base).max() > 1e-3
    np.testing.assert_array_equal(loaded, trained)


def run_steps(base_dir, devices, mesh_shape):
    losses, _, state = run_program_steps(LoRAPretraining(lora_config(base_dir, "unused")), devices, mesh_shape)
    return losses, state


def test_eight_devices_with_fsdp_equal_one_device(base_dir):
    ref_losses, ref = run_steps(base_dir, 1, (1, 1))
    losses, state = run_steps(base_dir, 8, (4, 2))
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(state["params"]), strict=True))
    print(f"LoRA 1 device vs 8 (data 4 x fsdp 2), 2 steps: losses {np.round(ref_losses, 6)}, max loss diff "
          f"{np.abs(np.subtract(losses, ref_losses)).max():.2e}, adapters {diff:.2e}")
    assert np.abs(np.subtract(losses, ref_losses)).max() < 1e-6 and diff < 1e-6
    fc1 = state["params"]["blocks"]["mlp"]["fc1"]["lora"]["adapters"]["default_0"][0]
    assert fc1["a"].sharding.spec == P(None, "fsdp", None)
    assert state["frozen"]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)


@pytest.mark.parametrize("override, message", [
    ("lora.rank=0", r"lora.rank must be at least 1, got 0"),
    ("lora.dropout=1", r"lora.dropout must be in \[0, 1\), got 1"),
    ("lora.targets=[to_q,to_qq]", r"unknown lora.targets \['to_qq'\]"),
    ("model.init_from=null", r"lora needs model.init_from"),
    ("sample.every=5", r"sample.every must be 0 with lora"),
])
def test_bad_lora_settings_are_refused_up_front(base_dir, tmp_path, capsys, override, message):
    with pytest.raises(ConfigError, match=message):
        lora_config(base_dir, tmp_path / "run", override)
    assert main([TINY, f"workdir={tmp_path / 'run'}", f"model.init_from={base_dir}", *LORA, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_controlnet_training_refuses_a_lora_section(base_dir):
    with pytest.raises(ConfigError, match="a lora: section is not supported by ControlNet training"):
        controlnet.load_config(CONFIGS / "controlnet_tiny.yaml", ["workdir=w", f"model.init_from={base_dir}",
                                                                  "lora.rank=4"])



def test_the_lora_step_lowers_from_shapes_alone(base_dir):
    """What train.plan does before its TPU compile (tests/planning runs that where libtpu is): the adapted model
    of the preset's shapes (nnx.eval_shape: nothing drawn or loaded), its abstract state (the base frozen in the
    compute dtype, the adapters float32), the step lowered."""
    cfg = lora_config(base_dir, "unused", "mesh.fsdp=2", "model.compute_dtype=bfloat16")
    program = pretraining.program(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None)))
    model, mesh = nnx.eval_shape(program.model), make_mesh(-1, 2)
    state, _ = program.abstract_state(model, mesh)
    assert sorted(state) == ["buffers", "frozen", "opt", "params", "rng", "step"]
    assert {leaf.dtype for leaf in jax.tree.leaves(state["frozen"])} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
    batch = abstract_batch(program.batch_shapes(model.cfg, (16, 16)), cfg.data.batch_size, mesh)
    with jax.set_mesh(mesh):
        assert "dot_general" in program.step(model, mesh).lower(state, batch).as_text()
