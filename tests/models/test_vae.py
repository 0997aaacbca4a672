"""AutoencoderKL: parity with diffusers' AutoencoderKL (random weights, real on-disk layout), bf16, errors."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.vae import SD_VAE, AutoencoderKL, VAEConfig
from pixart_jax.testing.random_weights import redraw
from pixart_jax.weights import WeightsError, export_weights, load_safetensors, save_safetensors
from pixart_jax.weights.keymaps.vae import vae_rules
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.vae import load_vae
from tests.helpers.parity import edited_copy, rel_error

WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4)
VARIANTS = {"tiny": TINY, "tiny_bare": dict(TINY, use_quant_conv=False, use_post_quant_conv=False,
                                            mid_block_add_attention=False)}
SD = dict(block_out_channels=SD_VAE.block_out_channels, layers_per_block=SD_VAE.layers_per_block,
          norm_num_groups=32, latent_channels=4, sample_size=512)

encode = nnx.jit(lambda vae, x: vae.encode(x))
decode = nnx.jit(lambda vae, z: vae.decode(z))


def diffusers_config(config):
    levels = len(config["block_out_channels"])
    return dict(config, down_block_types=("DownEncoderBlock2D",) * levels,
                up_block_types=("UpDecoderBlock2D",) * levels)


def save_reference(config, seed, directory):
    import diffusers

    model = redraw(diffusers.AutoencoderKL(**diffusers_config(config)), seed).eval()
    model.save_pretrained(directory)
    return model


def images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


def latents(batch, size, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 4, size, size)).astype(np.float32)


def reference_encode(model, x):
    import torch

    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(x).to(model.dtype)).latent_dist
    return posterior.mean.float().numpy(), posterior.std.float().numpy()


def reference_decode(model, z):
    import torch

    with torch.no_grad():
        return model.decode(torch.from_numpy(z).to(model.dtype)).sample.float().numpy()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    pytest.importorskip("diffusers")
    path = tmp_path_factory.mktemp(request.param) / "vae"
    return request.param, path, save_reference(VARIANTS[request.param], 1, path)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    path = tmp_path_factory.mktemp("sd_vae") / "vae"
    model = save_reference(SD, 2, path)
    x, z = images(1, 256), latents(1, 32)
    expected = reference_encode(model, x), reference_decode(model, z)
    return path, x, z, expected


def test_tiny_parity(tiny):
    name, path, model = tiny
    vae = load_vae(str(path))
    x, z = images(2, 32), latents(2, 12)
    mean, std = encode(vae, x)
    ref_mean, ref_std = reference_encode(model, x)
    errors = rel_error(mean, ref_mean), rel_error(std, ref_std), rel_error(decode(vae, z), reference_decode(model, z))
    print(f"VAE {name} rel_error mean {errors[0]:.2e} std {errors[1]:.2e} decode {errors[2]:.2e}")
    assert max(errors) <= 1e-5


def test_sd_vae_parity(sd):
    """The real SD VAE layout: encode a 256x256 image, decode a 32x32 latent."""
    path, x, z, ((ref_mean, ref_std), ref_images) = sd
    vae = load_vae(str(path))
    mean, std = encode(vae, x)
    errors = rel_error(mean, ref_mean), rel_error(std, ref_std), rel_error(decode(vae, z), ref_images)
    print(f"SD VAE rel_error: encode 256px mean {errors[0]:.2e} std {errors[1]:.2e}, decode 32x32 {errors[2]:.2e}")
    assert max(errors) <= 1e-5


def test_bf16(tiny):
    """bf16 compute is about as accurate as diffusers' own bf16 run (both against fp32; the max-based measure
    swings by tens of percent between inputs, hence the factor 2)."""
    torch = pytest.importorskip("torch")
    import copy

    _, path, model = tiny
    vae = load_vae(str(path), dtype=jnp.bfloat16)
    x, z = images(2, 32), latents(2, 12)
    expected = reference_encode(model, x)[0], reference_decode(model, z)
    model16 = copy.deepcopy(model).to(torch.bfloat16)
    ours = rel_error(encode(vae, x)[0], expected[0]), rel_error(decode(vae, z), expected[1])
    theirs = rel_error(reference_encode(model16, x)[0], expected[0]), rel_error(reference_decode(model16, z),
                                                                                 expected[1])
    print(f"VAE bf16 rel_error (encode mean, decode): ours {ours[0]:.2e} {ours[1]:.2e}, "
          f"diffusers {theirs[0]:.2e} {theirs[1]:.2e}")
    assert ours[0] <= 2 * theirs[0] and ours[1] <= 2 * theirs[1]


def test_legacy_attention_names(tiny, tmp_path):
    """Checkpoints saved before diffusers renamed the attention (query/key/value/proj_attn) load the same."""
    name, path, model = tiny
    if not VARIANTS[name].get("mid_block_add_attention", True):
        pytest.skip("no attention in this variant")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for key, value in load_safetensors(path / WEIGHTS).items():
        for new, old in renames.items():
            key = key.replace(new, old) if "attentions.0" in key else key
        state[key] = value
    assert any(".proj_attn." in key for key in state)
    save_safetensors(state, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    z = latents(1, 8)
    assert rel_error(decode(load_vae(str(tmp_path)), z), reference_decode(model, z)) <= 1e-5


# Checkpoints written from our own randomly initialised model (no torch needed): sampling, round trip, errors.

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae_exported")
    cfg = VAEConfig(**TINY)
    vae = AutoencoderKL(cfg, rngs=nnx.Rngs(3))
    save_safetensors(export_weights(vae_rules(2, 1), flat_arrays(vae)), path / WEIGHTS)
    config = {"_class_name": "AutoencoderKL", **diffusers_config(dataclasses.asdict(cfg))}
    (path / "config.json").write_text(json.dumps(config))
    return path, vae


def test_export_round_trip_and_sampling(exported):
    path, vae = exported
    loaded = load_vae(str(path))
    x = images(1, 16)
    np.testing.assert_array_equal(decode(loaded, latents(1, 8)), decode(vae, latents(1, 8)))
    mean, std = encode(loaded, x)
    assert mean.shape == std.shape == (1, 4, 8, 8) and bool(jnp.all(std > 0))
    a, b = AutoencoderKL.sample(mean, std, jax.random.key(0)), AutoencoderKL.sample(mean, std, jax.random.key(1))
    np.testing.assert_array_equal(a, AutoencoderKL.sample(mean, std, jax.random.key(0)))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose((a - mean) / std, jax.random.normal(jax.random.key(0), mean.shape), atol=1e-5)


def test_fp16_refused(exported):
    with pytest.raises(ValueError, match="bfloat16"):
        load_vae(str(exported[0]), dtype=jnp.float16)


def test_errors_name_the_key(exported, tmp_path):
    path, _ = exported
    key = "decoder.up_blocks.1.resnets.1.conv2.weight"
    with pytest.raises(WeightsError, match=f"missing key '{key}'"):
        load_vae(edited_copy(path, WEIGHTS, tmp_path / "missing", edit_state=lambda s: s.pop(key)))
    bogus = "encoder.down_blocks.1.downsamplers.0.conv.weight"  # the last level has no downsampler
    with pytest.raises(WeightsError, match=f"unexpected key '{bogus}'"):
        load_vae(edited_copy(path, WEIGHTS, tmp_path / "extra",
                           edit_state=lambda s: s.update({bogus: np.zeros((64, 64, 3, 3), np.float32)})))
    with pytest.raises(WeightsError, match="shape mismatch for key 'encoder.conv_out.weight'"):
        load_vae(edited_copy(path, WEIGHTS, tmp_path / "shape", edit_config=lambda c: c.update(latent_channels=8)))


def test_wrong_directory(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        load_vae(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError, match="pass its vae/ subfolder"):
        load_vae(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(WeightsError, match="not a diffusers AutoencoderKL"):
        load_vae(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "block_out_channels": [32],
                                                      "down_block_types": ["DownBlock2D"]}))
    with pytest.raises(WeightsError, match="unsupported down_block_types"):
        load_vae(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **TINY}))
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_vae(str(tmp_path))
