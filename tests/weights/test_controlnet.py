"""ControlNet checkpoints: a new ControlNet from a base equals the base, the copies shard like base blocks, bit-exact
round trips through the original .pth and our format, and clear errors for the wrong kind of checkpoint."""
import json
import pathlib

import numpy as np
import pytest
from flax import nnx

import pixart_jax
from pixart_jax.models.controlnet import ControlNetConfig, PixArtControlNet
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.sharding import variable_axes
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.weights import WeightsError, load_pth
from pixart_jax.weights.controlnet import (
    config_from_official,
    config_to_official,
    load_controlnet,
    save_controlnet,
    save_controlnet_jax,
)
from pixart_jax.weights.files import read_state_dict
from pixart_jax.weights.nnx_state import flat_arrays
from pixart_jax.weights.transformer import save_jax, save_original
from tests.helpers.controlnet_fixtures import CLASSES, fixture, run


def tiny_base(micro=True, depth=4, seed=0):
    cfg = PRESETS["tiny"].replace(depth=depth, micro_conditions=micro)
    return redraw_nnx(PixArtTransformer(cfg, rngs=nnx.Rngs(seed)), seed)


def inputs(micro, batch=2, h=8, w=12, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, 120), np.float32)
    mask[0, 5:] = 0
    x = dict(latents=rng.standard_normal((batch, 4, h, w)).astype(np.float32), timestep=np.array([999.0, 3.0]),
             encoder_hidden_states=rng.standard_normal((batch, 120, 32)).astype(np.float32),
             encoder_attention_mask=mask)
    if micro:
        x.update(resolution=np.array([[64.0, 96.0]] * batch, np.float32),
                 aspect_ratio=np.full((batch, 1), 2 / 3, np.float32))
    return x, rng.standard_normal((batch, 4, h, w)).astype(np.float32)


forward = nnx.jit(lambda model, kwargs: model(**kwargs))


def call(model, **kwargs):
    return np.asarray(forward(model, kwargs))


@pytest.mark.parametrize("micro,copies", [(True, 2), (False, 3), (True, 1)])
def test_new_controlnet_equals_its_base(micro, copies):
    """Copies start as the base's first blocks and the zero linears add exactly 0: with or without control the
    output is the base's, bit for bit."""
    base = tiny_base(micro)
    x, control = inputs(micro, h=16, w=16)  # the native grid: the fixed-size class uses its stored table there
    expected = call(base, **x)
    model = PixArtControlNet(base, copies)
    blocks, copied = flat_arrays(base.blocks), flat_arrays(model.copies)
    assert all(np.array_equal(copied[k], blocks[k][:copies]) for k in blocks)
    np.testing.assert_array_equal(call(model, **x), expected)
    np.testing.assert_array_equal(call(model, **x, control=control), expected)
    redraw_nnx(model.after_proj, 1)  # a trained branch changes the output
    assert np.abs(call(model, **x, control=control) - expected).max() > 1e-3


def test_copies_declare_the_axes_of_base_blocks():
    model = PixArtControlNet(tiny_base(), 2)
    axes = variable_axes(model)
    for name in ("attn.qkv.kernel", "mlp.fc1.kernel", "scale_shift_table"):
        assert axes[f"copies.{name}"] == axes[f"base.blocks.{name}"]
    assert axes["after_proj.kernel"] == ("layers", "kernel_in", "kernel_out")
    assert axes["before_proj.kernel"] == ("kernel_in", "kernel_out")


def test_bad_copies_and_control_shapes_are_clear_errors():
    base = tiny_base(depth=3)
    with pytest.raises(ValueError, match="copies 1 to depth - 1 = 2 base blocks, got copies=3"):
        PixArtControlNet(base, 3)
    x, control = inputs(True)
    with pytest.raises(ValueError, match=r"control latents must have the shape of the latents \(2, 4, 8, 12\)"):
        call(PixArtControlNet(base, 2), **x, control=control[:, :, :4])


def params(model):
    return {k: np.asarray(v) for k, v in flat_arrays(model).items()}


def assert_same(a, b, where):
    assert a.keys() == b.keys(), where
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{where}: {k}")


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_round_trips_are_bit_exact(name, tmp_path):
    directory, io = fixture(name)
    model = load_controlnet(directory)
    ours = params(model)
    save_controlnet(model, str(tmp_path / "again.pth"))
    save_controlnet(model, str(tmp_path / "again.safetensors"))
    save_controlnet_jax(model, str(tmp_path / "jax"))
    save_controlnet(model, str(tmp_path / "official"))
    for path in ("again.pth", "again.safetensors", "jax", "official"):
        back = load_controlnet(str(tmp_path / path), config=model.config)
        assert_same(params(back), ours, path)
    np.testing.assert_array_equal(run(load_controlnet(str(tmp_path / "jax")), io, micro=name == "ms"),
                                  run(model, io, micro=name == "ms"))
    written = load_pth(str(tmp_path / "again.pth"))["state_dict"]
    assert_same({k: np.asarray(v) for k, v in written.items()}, read_state_dict(f"{directory}/controlnet.pth"),
                "the fixture's own state dict")
    official = json.loads(pathlib.Path(directory, "config.json").read_text())
    assert config_from_official(official) == model.config
    assert load_controlnet(str(tmp_path / "official")).config == model.config  # no config= needed
    assert config_from_official(config_to_official(model.config)) == model.config


def test_official_constructor_arguments():
    args = {"depth": 5, "hidden_size": 48, "num_heads": 4, "input_size": 8, "caption_channels": 32,
            "model_max_length": 8, "copy_blocks_num": 3, "class": "ControlPixArtHalf", "drop_path": 0.0,
            "class_dropout_prob": 0.1, "window_block_indexes": []}
    cfg = config_from_official(args)
    assert (cfg.copies, cfg.base.sample_size, cfg.base.micro_conditions, cfg.base.max_tokens) == (3, 8, False, 8)
    assert config_from_official({"multi_scale": True}) == ControlNetConfig(PRESETS["PixArt-XL-2-1024-MS"].replace(
        sample_size=32, interpolation_scale=1.0))  # the constructors' defaults
    for bad, message in (({"qk_norm": True}, r"unknown ControlNet constructor arguments \['qk_norm'\]"),
                         ({"use_rel_pos": True}, r"unsupported constructor arguments \['use_rel_pos=True'\]"),
                         ({"class": "ControlPixArtMSHalf", "multi_scale": False}, "does not go with"),
                         ({"copy_blocks_num": 5, "depth": 5}, "copies 1 to depth - 1 = 4")):
        with pytest.raises(WeightsError, match=message):
            config_from_official({**args, **bad})


def test_original_file_names_and_copy_counts(tmp_path):
    base = tiny_base(micro=False)
    model = PixArtControlNet(base, 2)
    save_controlnet(model, str(tmp_path / "controlnet.pth"))
    loaded = load_controlnet(str(tmp_path / "controlnet.pth"), config=base.cfg)  # copies from the keys
    assert loaded.num_copies == 2 and loaded.pos_embed is not None
    with pytest.raises(WeightsError, match="cannot tell the ControlNet variant from 'controlnet.pth'"):
        load_controlnet(str(tmp_path / "controlnet.pth"))
    with pytest.raises(WeightsError, match="shape mismatch"):  # named a 512 model, holds a tiny one
        load_controlnet(str(tmp_path / "controlnet.pth"), config="PixArt-XL-2-512-ControlNet")


def test_start_from_a_base_checkpoint(tmp_path):
    base = tiny_base()
    save_jax(base, str(tmp_path / "base"))
    model = pixart_jax.load_controlnet(base=str(tmp_path / "base"), copies=3)
    assert model.num_copies == 3
    assert_same(params(model.base), params(base), "base")
    with pytest.raises(ValueError, match="either a ControlNet checkpoint path or base="):
        load_controlnet(str(tmp_path / "base"), base=base)


def test_the_wrong_kind_of_checkpoint_is_a_clear_error(tmp_path):
    base = tiny_base()
    save_original(base, str(tmp_path / "PixArt-XL-2-1024-MS.pth"))
    save_jax(base, str(tmp_path / "plain"))
    for plain in ("PixArt-XL-2-1024-MS.pth", "plain"):
        with pytest.raises(WeightsError, match="plain PixArt transformer checkpoint, not a ControlNet"):
            load_controlnet(str(tmp_path / plain))
    model = PixArtControlNet(base, 2)
    save_controlnet(model, str(tmp_path / "PixArt-XL-2-1024-ControlNet.pth"))
    save_controlnet_jax(model, str(tmp_path / "controlnet"))
    directory, _ = fixture("ms")
    for controlnet in ("PixArt-XL-2-1024-ControlNet.pth", "controlnet", directory):
        with pytest.raises(WeightsError, match="is a PixArt ControlNet-Transformer checkpoint, not a plain"):
            pixart_jax.load_transformer(str(tmp_path / controlnet))
    with pytest.raises(WeightsError, match="does not exist"):
        load_controlnet(str(tmp_path / "missing.pth"))
