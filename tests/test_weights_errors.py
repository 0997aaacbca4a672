"""Bad checkpoints get errors that name the key, the shapes or the file (no torch needed)."""
import json

import numpy as np
import pytest
from flax import nnx

from pixart_jax import checkpoints
from pixart_jax.config import PRESETS
from pixart_jax.transformer import PixArtTransformer
from pixart_jax.weights import CheckpointError
from tests.parity import edited_copy

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "transformer"
    checkpoints.save_diffusers(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), str(path))
    return path


def test_good_directory_loads(good_dir):
    assert checkpoints.load_transformer(str(good_dir)).cfg.depth == PRESETS["tiny"].depth


def test_missing_key_is_named_with_its_shape(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.pop("transformer_blocks.1.attn2.to_v.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'transformer_blocks\.1\.attn2\.to_v\.weight' "
                                              r"\(expected shape \(48, 48\)\)"):
        checkpoints.load_transformer(path)


def test_extra_key_is_named(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.update({"lora.up.weight": np.zeros((3, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'lora\.up\.weight' of shape \(3, 2\)"):
        checkpoints.load_transformer(path)


def test_wrong_shape_names_key_and_both_shapes(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.update({"proj_out.weight": np.zeros((16, 48), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'proj_out\.weight'.* has \(16, 48\), model expects \(32, 48\)"):
        checkpoints.load_transformer(path)


def test_non_checkpoint_files_get_clear_messages(tmp_path):
    text = tmp_path / "PixArt-XL-2-512x512.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        checkpoints.load_transformer(str(text))
    zipped = tmp_path / "PixArt-XL-2-1024-MS.pth"
    zipped.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        checkpoints.load_transformer(str(zipped))
    with pytest.raises(CheckpointError, match="has no config.json"):
        checkpoints.load_transformer(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="describes a 'AutoencoderKL', not a PixArt transformer"):
        checkpoints.load_transformer(str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load_transformer(str(tmp_path / "nope"))


def test_unknown_variant_name_asks_for_a_config(tmp_path, good_dir):
    path = str(tmp_path / "weights.safetensors")
    checkpoints.save_original(checkpoints.load_transformer(str(good_dir)), path)
    with pytest.raises(ValueError, match="cannot tell the PixArt variant from 'weights.safetensors'"):
        checkpoints.load_transformer(path)
    assert checkpoints.load_transformer(path, config="tiny").cfg == PRESETS["tiny"]
