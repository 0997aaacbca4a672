"""Checkpoints: restore onto another mesh, a corrupt newest checkpoint, NaN never saved, fine-tuning start."""
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.sharding import make_mesh
from pixart_jax.training.checkpoints import Checkpoints
from pixart_jax.training.config import load_config
from pixart_jax.training.data import feature_dataset
from pixart_jax.training.loop import NonFiniteLossError
from pixart_jax.training.pretraining import Pretraining, train
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.transformer import save_jax
from tests.helpers.paths import CONFIGS

TINY = CONFIGS / "tiny.yaml"
QUICK = ["sample.every=0", "logging.progress=false", "data.synthetic_buckets=[1.0]", "data.synthetic_examples=16"]


def tiny_config(workdir, *overrides):
    return load_config(TINY, [f"workdir={workdir}", *QUICK, *overrides])


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_restore_onto_another_mesh_with_the_data_position(tmp_path):
    cfg = tiny_config(tmp_path)
    examples = synthetic_examples(16, seed=0, caption_channels=32)
    program = Pretraining(cfg)
    model = program.model()
    mesh = make_mesh(8, 1)
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
    it = iter(feature_dataset(examples, batch_size=8, seed=1))
    next(it), next(it)
    ckpts = Checkpoints(tmp_path / "ckpt", async_save=True)
    ckpts.save(2, state, it, {"note": "test"})
    expected_next = next(it)
    ckpts.close()

    other = make_mesh(2, 4)
    target, _ = program.abstract_state(model, other)
    fresh = iter(feature_dataset(examples, batch_size=8, seed=1))
    step, restored = Checkpoints(tmp_path / "ckpt").restore(target, fresh)
    assert step == 2
    assert all((a == b).all() for a, b in zip(leaves(state), leaves(restored)))
    kernel = restored["params"]["blocks"]["attn"]["qkv"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 4}
    assert kernel.sharding.spec[1] == "fsdp"
    assert all((expected_next[k] == v).all() for k, v in next(fresh).items())


def test_corrupt_newest_checkpoint_falls_back_and_nan_never_saves(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "steps=4", "checkpoint_every=2")
    first = train(cfg)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]

    # truncate every array file of the newest checkpoint
    for root, _, files in os.walk(ckpt_dir / "4" / "state"):
        for name in files:
            if "d" == pathlib.Path(root).name or name.startswith("process") or name.endswith("ocdbt"):
                (pathlib.Path(root) / name).write_bytes(b"")
    again = train(cfg)
    err = capsys.readouterr().err
    assert "checkpoint 4" in err and "unreadable" in err
    assert any(name.startswith("corrupt-4") for name in os.listdir(ckpt_dir))
    assert again.losses == {3: first.losses[3], 4: first.losses[4]}
    assert all((a == b).all() for a, b in zip(leaves(first.state["params"]), leaves(again.state["params"])))

    poisoned = synthetic_examples(16, seed=cfg.seed, caption_channels=32)
    for example in poisoned:
        example["mean"] = np.full_like(example["mean"], np.nan)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan .* at step 5: stopping without saving.*step 4"):
        train(tiny_config(tmp_path, "steps=8", "checkpoint_every=1"), examples=poisoned)
    assert sorted(n for n in os.listdir(ckpt_dir) if n.isdigit()) == ["2", "4"]
    resumed = train(tiny_config(tmp_path, "steps=4", "checkpoint_every=2"))
    assert resumed.losses == {} and resumed.step == 4  # the good step-4 state is still the newest


def test_finetune_starts_from_a_converted_checkpoint(tmp_path):
    model = PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(7))
    save_jax(model, str(tmp_path / "export"))
    cfg = tiny_config(tmp_path / "run", "steps=1", "checkpoint_every=1", f"model.init_from={tmp_path / 'export'}",
                      "model.remat=block")
    result = train(cfg)
    assert np.isfinite(result.losses[1])
    np.testing.assert_array_equal(result.state["buffers"]["y_embedding"], model.y_embedding.get_value())
