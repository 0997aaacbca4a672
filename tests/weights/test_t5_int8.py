"""The int8 T5 folder (pixart_jax.weights.t5_int8) and the JAX side of int8 loading, without torch: the export holds
exactly the codes and scales the JAX loader quantises to, reads back bitwise, is written one block at a time, and
refuses the wrong use."""
import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pixart_jax.models.int8 import quantize_kernel
from pixart_jax.testing.stand_ins import save_t5
from pixart_jax.weights import WeightsError, load_safetensors, save_safetensors
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.t5 import encoder_parts, load_text_encoder
from pixart_jax.weights.t5_int8 import export_int8_t5
from tests.helpers.parity import rel_error

LINEAR = "encoder.block.1.layer.1.DenseReluDense.wo"


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    src, _ = save_t5(root / "t5", seed=3)
    return root, src, export_int8_t5(src, str(root / "int8"))


def numpy_state(model):
    return {k: np.asarray(v) for k, v in flat_arrays(model).items()}


def test_export_holds_the_codes_and_scales_of_quantize_kernel(t5):
    _, src, dst = t5
    source, exported = load_safetensors(f"{src}/model.safetensors"), load_safetensors(f"{dst}/model.safetensors")
    codes, scale = quantize_kernel(np.asarray(source[f"{LINEAR}.weight"]).T)
    assert exported[f"{LINEAR}.weight"].dtype == np.int8
    np.testing.assert_array_equal(exported[f"{LINEAR}.weight"], codes.T)
    np.testing.assert_array_equal(exported[f"{LINEAR}.weight_scale"], scale)
    linears = [k for k in exported if k.endswith(".weight_scale")]
    assert len(linears) == 2 * 7  # q, k, v, o, wi_0, wi_1, wo per block
    np.testing.assert_array_equal(exported["shared.weight"], source["shared.weight"])  # floats kept as they are
    config = json.loads(open(f"{dst}/config.json").read())
    assert config["pixart_jax_quantization"].startswith("int8")


def test_jax_loads_the_export_bitwise_as_it_quantises_the_source(t5):
    _, src, dst = t5
    from_source = numpy_state(load_text_encoder(src, int8=True))
    from_export = numpy_state(load_text_encoder(dst, int8=True))
    assert from_source.keys() == from_export.keys()
    for key in from_source:
        assert from_source[key].dtype == from_export[key].dtype, key
        np.testing.assert_array_equal(from_source[key], from_export[key], err_msg=key)
    assert from_export["blocks.0.ff.wo.kernel"].dtype == np.int8


def test_int8_embeddings_close_to_float(t5):
    _, src, dst = t5
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 100, (2, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16) < np.array([[9], [16]]), jnp.int32)
    reference = load_text_encoder(src)(ids, mask)
    err = rel_error(load_text_encoder(dst, int8=True)(ids, mask), reference)
    print(f"int8 vs float32 T5 (tiny, random): {err:.2e} relative")
    assert 0 < err < 0.05


def test_float_dtype_of_the_export(t5):
    root, src, _ = t5
    dst = export_int8_t5(src, str(root / "int8-bf16"), "bfloat16")
    tensors = load_safetensors(f"{dst}/model.safetensors")
    assert tensors["shared.weight"].dtype == ml_dtypes.bfloat16
    assert tensors[f"{LINEAR}.weight_scale"].dtype == np.float32 and tensors[f"{LINEAR}.weight"].dtype == np.int8
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_int8_t5(src, str(root / "bad"), "float8")
    assert not (root / "bad").exists()


def test_parts_are_read_one_block_at_a_time(t5):
    _, src, _ = t5
    cfg, specs, parts = encoder_parts(src, int8=True)
    first = next(parts)
    assert set(first) == {k for k in specs if k.startswith("blocks.0.")}
    assert list(specs)[-1] in {"embed.embedding", "relative_attention_bias.embedding", "final_norm.scale"}
    assert specs["blocks.0.attn.q.kernel"] == (np.dtype(np.int8), (cfg.d_model, cfg.num_heads * cfg.d_kv))


def test_errors(t5, tmp_path):
    root, src, dst = t5
    with pytest.raises(WeightsError, match="holds an int8 T5.*int8=True"):
        load_text_encoder(dst)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(open(f"{src}/config.json").read())
    tensors = dict(load_safetensors(f"{src}/model.safetensors"))
    tensors[f"{LINEAR}.weight"] = tensors[f"{LINEAR}.weight"][:, :5]
    save_safetensors(tensors, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match=f"shape mismatch for key '{LINEAR}.weight'"):
        export_int8_t5(str(broken), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
