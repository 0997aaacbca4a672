"""LoRA adapters on our model alone: PEFT's initialisation, the distinct variable type and the stacked layers axis,
per-adapter weights, merge and unmerge, removal, and the errors (the parity with PEFT is in
tests/weights/test_lora.py)."""
import jax
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models import lora
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.weights.lora import add_lora
from tests.helpers.parity import rel_error
from tests.helpers.transformer_io import inputs, run_ours

CFG = PRESETS["tiny"].replace(max_tokens=8)  # depth 2, width 48, micro-conditioned
X = inputs(2, 8, 12)


def base_model():
    return redraw_nnx(PixArtTransformer(CFG, rngs=nnx.Rngs(0)), 1)


def randomize_b(model, name, seed):
    """Adapter `name`'s B matrices drawn at random (they start at zero), so that it changes the output."""
    for n, (_, module) in enumerate(lora.adapted_modules(model)):
        for part in module.lora.adapters[name] if name in module.lora.adapters else ():
            part.b.set_value(0.2 * jax.random.normal(jax.random.key(seed * 1000 + n), part.b.shape))


@pytest.fixture(scope="module")
def adapted():
    """(base output, model with adapters "one" (rank 4) and "two" (rank 2, rsLoRA, fewer targets), B random)."""
    model = base_model()
    out = run_ours(model, X)
    add_lora(model, rank=4, alpha=8, adapter_name="one", seed=1)
    add_lora(model, ["to_q", "to_v", "proj"], rank=2, alpha=3, use_rslora=True, init="gaussian",
             adapter_name="two", seed=2)
    randomize_b(model, "one", 1)
    randomize_b(model, "two", 2)
    return out, model


def test_new_adapter_changes_nothing_and_a_is_drawn_as_peft_draws_it():
    model = base_model()
    out = run_ours(model, X)
    add_lora(model, rank=8, alpha=8, adapter_name="k")
    add_lora(model, rank=8, alpha=8, init="gaussian", adapter_name="g")
    assert np.array_equal(run_ours(model, X), out)  # B starts at zero
    qkv = model.blocks.attn.qkv.lora.adapters
    a_k, a_g = np.asarray(qkv["k"][0].a[...]), np.asarray(qkv["g"][0].a[...])
    assert a_k.shape == (CFG.depth, 48, 8) and not np.any(qkv["k"][0].b[...])
    assert np.abs(a_k).max() <= 1 / np.sqrt(48) and np.std(a_k) == pytest.approx(1 / np.sqrt(3 * 48), rel=0.1)
    assert np.std(a_g) == pytest.approx(1 / 8, rel=0.1)
    conv = np.asarray(model.x_embedder.lora.adapters["k"][0].a[...])  # fan_in = in channels × kernel size
    assert conv.shape == (2, 2, 4, 8) and np.abs(conv).max() <= 1 / np.sqrt(16)


def test_adapters_are_their_own_variables_with_the_layers_axis(adapted):
    _, model = adapted
    adapters = nnx.to_flat_state(nnx.state(model, lora.LoRAParam))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert adapters and not any(isinstance(v, lora.LoRAParam) for _, v in params)
    # fused q/k/v: one part per diffusers module, each (layers, in, r) / (layers, r, width) with its start
    parts = model.blocks.attn.qkv.lora.adapters["one"]
    assert [(p.start, p.a.shape, p.b.shape) for p in parts] == [(48 * k, (2, 48, 4), (2, 4, 48)) for k in range(3)]
    assert parts[0].a.get_metadata("axes") == ("layers", "kernel_in", None)
    assert parts[0].b.get_metadata("axes") == ("layers", None, "kernel_out")


def test_weights_scale_each_adapter(adapted):
    base, model = adapted
    embed = model.x_embedder  # adapted by both ("proj" names diffusers' pos_embed.proj)
    lora.set_adapters(model, [])
    plain = np.asarray(embed(X["latents"]))
    deltas = {}
    for name in ("one", "two"):
        lora.set_adapters(model, name)
        deltas[name] = np.asarray(embed(X["latents"])) - plain
        assert rel_error(deltas[name], plain) > 0.05
    lora.set_adapters(model, ["one", "two"], [0.5, -1.5])
    assert lora.active_adapters(model) == {"one": 0.5, "two": -1.5}
    assert rel_error(np.asarray(embed(X["latents"])) - plain, 0.5 * deltas["one"] - 1.5 * deltas["two"]) <= 1e-6
    lora.set_adapters(model, ["one"], 0.0)
    assert np.array_equal(run_ours(model, X), base)


def test_merged_equals_unmerged_and_unmerge_restores_the_kernels(adapted):
    _, model = adapted
    lora.set_adapters(model, ["one", "two"], [0.5, -1.5])
    kernels = {path: np.asarray(m.kernel[...]) for path, m in lora.adapted_modules(model)}
    changes = {path: np.asarray(m.lora.kernel_change(m.kernel[...])) for path, m in lora.adapted_modules(model)}
    unmerged = run_ours(model, X)
    lora.fuse_lora(model)
    assert rel_error(run_ours(model, X), unmerged) <= 1e-6
    lora.unfuse_lora(model)
    for path, m in lora.adapted_modules(model):
        # (W + Δ) - Δ rounds twice in float32: each element within eps/2 · (|W + Δ| + |W|) of W
        bound = np.finfo(np.float32).eps * (np.abs(kernels[path]) + np.abs(changes[path]))
        assert np.all(np.abs(np.asarray(m.kernel[...]) - kernels[path]) <= bound)
    assert rel_error(run_ours(model, X), unmerged) <= 1e-6


def test_jitted_forward_with_adapters(adapted):
    _, model = adapted
    jitted = nnx.jit(lambda m, x: m(x["latents"], x["timestep"], x["encoder_hidden_states"],
                                    x["encoder_attention_mask"], x["resolution"], x["aspect_ratio"]))
    assert rel_error(np.asarray(jitted(model, X)), run_ours(model, X)) <= 1e-6


def test_unload_and_merge_and_unload():
    model = base_model()
    base = run_ours(model, X)
    add_lora(model, rank=2, adapter_name="x")
    randomize_b(model, "x", 3)
    adapted_out = run_ours(model, X)
    merged = lora.merge_and_unload(nnx.clone(model))
    assert lora.adapted_modules(merged) == [] and rel_error(run_ours(merged, X), adapted_out) <= 1e-6
    lora.fuse_lora(model)
    lora.unload_lora(model)  # merged adapters are taken out before they go
    assert lora.adapter_names(model) == [] and rel_error(run_ours(model, X), base) <= 1e-6


def test_errors():
    model = base_model()
    for rank in (0, -2, 1.5):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            add_lora(model, rank=rank)
    with pytest.raises(ValueError, match=r"unknown LoRA targets \['qkv', 'to_z'\]"):
        add_lora(model, ["to_q", "qkv", "to_z"])
    with pytest.raises(ValueError, match="init must be one of"):
        add_lora(model, init="uniform")
    assert lora.adapter_names(model) == []
    add_lora(model, ["proj_in", "to_q"], adapter_name="a")  # proj_in: in the PixArt list, absent from the model
    with pytest.raises(ValueError, match="already holds an adapter named 'a'"):
        add_lora(model, adapter_name="a")
    with pytest.raises(ValueError, match=r"unknown adapter names \['b'\]"):
        lora.set_adapters(model, ["a", "b"])
    lora.fuse_lora(model)
    with pytest.raises(ValueError, match="unfuse_lora it before set_adapters"):
        lora.set_adapters(model, "a")
