"""LoRA dropout (PEFT's lora_dropout): in a train step the adapters' inputs are dropped by keys from the step's key
(dropout 0 leaves the step bitwise as it was, dropout > 0 changes loss and gradient, one seed gives one result); a
model outside a train step (inference, export) never drops, and the exported PEFT folder records lora_dropout."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models import lora
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.training import lora_step
from pixart_jax.training.config import load_config
from pixart_jax.training.lora_step import split_adapted
from pixart_jax.training.pretraining import LoRAPretraining
from pixart_jax.weights.lora import add_lora, save_lora
from tests.helpers.paths import CONFIGS
from tests.helpers.steps import run_program_steps
from tests.helpers.transformer_io import inputs, run_ours
from tests.helpers.trees import save_random_tiny

LORA = ["lora.rank=4", "lora.alpha=8", "sample.every=0", "logging.progress=false", "data.synthetic_buckets=[1.0]",
        "checkpoint.async_save=false", "optimizer.warmup_steps=0"]  # no warmup: the first step moves B


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("base") / "tiny")


def two_steps(base_dir, *extra):
    """(losses, the adapted model after them) of two LoRA steps on one device from the program's initial state."""
    program = LoRAPretraining(load_config(CONFIGS / "tiny.yaml", ["workdir=unused", f"model.init_from={base_dir}",
                                                                  *LORA, *extra]))
    losses, _, state = run_program_steps(program, 1, (1, 1))
    graphdef = split_adapted(program.model())[0]
    return losses, nnx.merge(graphdef, state["params"], state["frozen"], state["buffers"])


@pytest.fixture(scope="module")
def runs(base_dir):
    """{name: (losses, adapted model)}: dropout 0 with and without the dropout keys (the step before dropout existed),
    dropout 0.5 twice."""
    out = {"zero": two_steps(base_dir, "lora.dropout=0")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora_step, "set_dropout_keys", lambda model, key: model)
        out["before"] = two_steps(base_dir, "lora.dropout=0")
    out["half"] = two_steps(base_dir, "lora.dropout=0.5")
    out["half again"] = two_steps(base_dir, "lora.dropout=0.5")
    return out


def adapters(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, lora.LoRAParam))]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(adapters(a), adapters(b), strict=True))


def test_dropout_zero_leaves_the_step_as_it_was(runs):
    assert runs["zero"][0] == runs["before"][0] and same(runs["zero"][1], runs["before"][1])


def test_dropout_changes_the_step_and_is_deterministic_for_a_seed(runs):
    (plain_losses, plain), (losses, model) = runs["zero"], runs["half"]
    print(f"LoRA losses of 2 steps: dropout 0.5 {np.round(losses, 6)}, dropout 0 {np.round(plain_losses, 6)}")
    assert losses[1] != plain_losses[1]  # the first loss is the base's: B starts at zero
    assert not np.array_equal(adapters(model)[1], adapters(plain)[1])  # a B
    assert losses == runs["half again"][0] and same(model, runs["half again"][1])


def test_inference_and_export_ignore_dropout(runs, tmp_path):
    model = runs["half"][1]
    save_lora(model, str(tmp_path / "lora"))  # what a finished run exports
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["lora_dropout"] == 0.5
    x = inputs(2, 8, 8)
    out = run_ours(model, x)
    for module in (m.lora for _, m in lora.adapted_modules(model)):
        assert module.dropout_key is None and all(part.dropout == 0.5 for part in module.parts())
        for part in module.parts():
            part.dropout = 0.0
    np.testing.assert_array_equal(run_ours(model, x), out)  # the same model without dropout, bitwise


def test_the_dropout_mask_is_peft_s():
    """Each element of an adapter's input zeroed with probability p, the rest scaled by 1 / (1 - p); each part (a
    PyTorch module fused into ours) its own mask; a dropout key per layer of the stacked blocks."""
    model = add_lora(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), ["to_q", "to_k", "linear_1"], rank=2,
                     dropout=0.3)
    lora.set_dropout_keys(model, jax.random.key(7))
    assert model.blocks.attn.qkv.lora.dropout_key.shape == (PRESETS["tiny"].depth,)
    assert model.t_embedder.fc1.lora.dropout_key.shape == ()  # outside the blocks: one key
    u = np.asarray(jax.random.uniform(jax.random.key(0), (64, 48), minval=1.0, maxval=2.0))
    masks = []
    for layer in range(PRESETS["tiny"].depth):
        qkv = model.block(layer).attn.qkv.lora  # the block as the scan sees it: its own key
        for index, part in enumerate(qkv.parts()):
            dropped = np.asarray(qkv.dropped(u, part, index))
            kept = dropped != 0
            np.testing.assert_allclose(dropped[kept], u[kept] / 0.7, rtol=1e-6)
            assert abs(1 - kept.mean() - 0.3) < 0.03
            masks.append(kept)
    assert len(masks) == 4 and all(not np.array_equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        add_lora(model, rank=2, dropout=1.0, adapter_name="x")
