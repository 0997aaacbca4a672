"""T5 encoder: parity with transformers' T5EncoderModel (random weights, real on-disk layouts), int8, errors."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.int8 import parameter_bytes, quantize_kernel
from pixart_jax.models.t5 import T5Config, T5Encoder, relative_position_buckets
from pixart_jax.testing.random_weights import redraw
from pixart_jax.weights import WeightsError, export_weights, save_safetensors
from pixart_jax.weights.keymaps.t5 import t5_rules
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.t5 import load_text_encoder
from tests.helpers.parity import edited_copy, rel_error

TINY = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3, feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=16, relative_attention_max_distance=24)
# The real T5-v1.1-XXL widths (what PixArt uses) with 2 of its 24 layers and a small vocabulary.
XXL = dict(vocab_size=128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=2,
           feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128)


def token_batch(vocab, batch, length, valid, seed=0):
    """Random ids with `valid[b]` real tokens per row (the last one EOS = 1) and pad id 0 after them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(valid)[:, None]).astype(np.int32)
    ids[np.arange(batch), np.asarray(valid) - 1] = 1
    return np.where(mask == 1, ids, 0), mask


def save_reference(config, seed, directory, q_scale=1.0, **save_kwargs):
    import torch
    import transformers

    model = redraw(transformers.T5EncoderModel(transformers.T5Config(**config)), seed).eval()
    with torch.no_grad():
        for block in model.encoder.block:
            block.layer[0].SelfAttention.q.weight.mul_(q_scale)
    model.save_pretrained(directory, **save_kwargs)
    return model


def run_reference(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.float().numpy()


def run_ours(model, ids, mask):
    return np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask), np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("t5") / "text_encoder"
    model = save_reference(TINY, 1, path)
    ids, mask = token_batch(TINY["vocab_size"], 3, 40, [40, 7, 1])
    return path, model, ids, mask, run_reference(model, ids, mask)


@pytest.fixture(scope="module")
def xxl(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("t5xxl") / "text_encoder"
    # q scaled by 1/sqrt(d_kv) as T5's own initialisation does: attention logits of order 1, not saturated, so
    # the bf16/int8 errors measured here are those of a model in a trained model's regime.
    model = save_reference(XXL, 2, path, q_scale=XXL["d_kv"] ** -0.5)
    ids, mask = token_batch(XXL["vocab_size"], 2, 120, [120, 23])
    expected = run_reference(model, ids, mask)
    del model
    return path, ids, mask, expected


def test_relative_position_buckets_match_reference():
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention

    for length, buckets, distance in [(120, 32, 128), (300, 32, 128), (40, 16, 24), (64, 8, 20)]:
        relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        expected = T5Attention._relative_position_bucket(relative, True, buckets, distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(length, buckets, distance), expected)


def test_tiny_parity(tiny):
    path, _, ids, mask, expected = tiny
    error = rel_error(run_ours(load_text_encoder(str(path)), ids, mask), expected)
    print(f"T5 tiny fp32 rel_error {error:.2e}")
    assert error <= 1e-5


def test_sharded_checkpoint(tiny, tmp_path):
    _, model, ids, mask, expected = tiny
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    assert rel_error(run_ours(load_text_encoder(str(tmp_path)), ids, mask), expected) <= 1e-5


def test_pytorch_bin_checkpoint_with_tied_embedding(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    path, model, ids, mask, expected = tiny
    state = model.state_dict()
    assert "encoder.embed_tokens.weight" in state  # the tied copy, as in DeepFloyd's .bin files
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    assert rel_error(run_ours(load_text_encoder(str(tmp_path)), ids, mask), expected) <= 1e-5


def test_encoder_of_full_encoder_decoder_checkpoint(tmp_path):
    """A T5ForConditionalGeneration folder: its decoder and LM head are ignored, its encoder matches."""
    pytest.importorskip("torch")
    import transformers

    model = redraw(transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY)), 4).eval()
    model.save_pretrained(tmp_path)
    ids, mask = token_batch(TINY["vocab_size"], 2, 12, [12, 4])
    expected = run_reference(model.get_encoder(), ids, mask)
    assert rel_error(run_ours(load_text_encoder(str(tmp_path)), ids, mask), expected) <= 1e-5


def test_bf16(tiny):
    """bf16 compute is no less accurate than the reference's own bf16 run (both against fp32)."""
    torch = pytest.importorskip("torch")
    import copy

    path, model, ids, mask, expected = tiny
    ours = rel_error(run_ours(load_text_encoder(str(path), dtype=jnp.bfloat16), ids, mask), expected)
    reference = rel_error(run_reference(copy.deepcopy(model).to(torch.bfloat16), ids, mask), expected)
    print(f"T5 tiny bf16 rel_error: ours {ours:.2e}, transformers {reference:.2e}")
    assert ours <= 1.25 * reference


def test_xxl_width_parity(xxl):
    path, ids, mask, expected = xxl
    error = rel_error(run_ours(load_text_encoder(str(path)), ids, mask), expected)
    print(f"T5 XXL-width (2 layers) fp32 rel_error {error:.2e}")
    assert error <= 1e-5


def test_xxl_width_int8(xxl):
    """int8 weights: output error against the fp32 reference (beside bf16's), and weight memory against bf16."""
    path, ids, mask, expected = xxl
    errors, rms = {}, {}
    for name, dtype, int8 in [("bf16", jnp.bfloat16, False), ("int8, fp32 compute", jnp.float32, True),
                              ("int8, bf16 compute", jnp.bfloat16, True)]:
        model = load_text_encoder(str(path), dtype=dtype, int8=int8)
        out = run_ours(model, ids, mask)
        errors[name] = rel_error(out, expected)
        rms[name] = float(np.linalg.norm(out - expected) / np.linalg.norm(expected))
    int8_bytes = parameter_bytes(model)
    bf16_bytes = parameter_bytes(nnx.eval_shape(lambda: T5Encoder(T5Config(**XXL), jnp.bfloat16, jnp.bfloat16,
                                                                  rngs=nnx.Rngs(0))))
    print("T5 XXL-width error vs fp32 reference (max-rel / rms-rel): "
          + ", ".join(f"{k} {errors[k]:.2e} / {rms[k]:.2e}" for k in errors))
    print(f"T5 XXL-width weights: int8 {int8_bytes / 2**20:.1f} MiB, bf16 {bf16_bytes / 2**20:.1f} MiB "
          f"(ratio {int8_bytes / bf16_bytes:.3f})")
    # Per-channel absmax int8 of Gaussian weights rounds each weight with ~1 % relative noise: a few % at the
    # output of 2 blocks (about 2.5x bf16's error), measured 3.6e-2 max-rel / 3.4e-2 rms-rel in fp32 compute.
    for name in ("int8, fp32 compute", "int8, bf16 compute"):
        assert errors[name] <= 6e-2 and rms[name] <= 5e-2, name
    assert int8_bytes <= 0.51 * bf16_bytes


def test_quantize_kernel_bounds_error():
    kernel = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    kernel[:, 3] = 0  # an all-zero column must not divide by zero
    q, scale = quantize_kernel(kernel)
    assert q.dtype == np.int8 and scale.shape == (32,)
    assert np.all(np.abs(q * scale - kernel) <= scale / 2 + 1e-7)


# Checkpoints written from our own randomly initialised model (no torch needed): round trip and errors.

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5_exported")
    config = T5Config(**TINY)
    model = T5Encoder(config, rngs=nnx.Rngs(3))
    save_safetensors(export_weights(t5_rules(config.num_layers), flat_arrays(model)), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"model_type": "t5", **TINY}))
    return path, model


def test_export_round_trip(exported):
    path, model = exported
    ids, mask = token_batch(TINY["vocab_size"], 2, 16, [16, 5])
    np.testing.assert_allclose(run_ours(load_text_encoder(str(path)), ids, mask), run_ours(model, ids, mask),
                               rtol=0, atol=1e-6)


def test_errors_name_the_key(exported, tmp_path):
    path, _ = exported
    key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    missing = edited_copy(path, "model.safetensors", tmp_path / "missing",
                        edit_state=lambda s: s.pop(key))
    with pytest.raises(WeightsError, match=f"missing key '{key}'"):
        load_text_encoder(missing)
    extra = edited_copy(path, "model.safetensors", tmp_path / "extra",
                      edit_state=lambda s: s.update({"encoder.block.0.layer.0.SelfAttention.bogus.weight":
                                                     np.zeros((2, 2), np.float32)}))
    with pytest.raises(WeightsError, match="unexpected key 'encoder.block.0.layer.0.SelfAttention.bogus.weight'"):
        load_text_encoder(extra)
    shape = edited_copy(path, "model.safetensors", tmp_path / "shape",
                      edit_config=lambda c: c.update(d_ff=40))
    with pytest.raises(WeightsError, match=r"shape mismatch for key 'encoder.block.0.layer.1.DenseReluDense"):
        load_text_encoder(shape)


def test_wrong_directory(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError, match="pass its text_encoder/ subfolder"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(WeightsError, match="not a T5 text encoder"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", **TINY}))
    with pytest.raises(WeightsError, match="has no weights: none of model.safetensors, pytorch_model.bin"):
        load_text_encoder(str(tmp_path))


def test_fp16_refused(exported):
    with pytest.raises(ValueError, match="bfloat16"):
        load_text_encoder(str(exported[0]), dtype=jnp.float16)
