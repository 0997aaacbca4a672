"""Bad checkpoints get errors that name the key, the shapes or the file (no torch needed)."""
import json
import re
import struct
import zipfile

import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.weights import WeightsError, load_pth, load_safetensors, save_pth
from pixart_jax.weights import transformer as transformer_weights
from pixart_jax.weights.safetensors_io import LazyTensors
from tests.helpers.parity import edited_copy

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "transformer"
    transformer_weights.save_diffusers(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), str(path))
    return path


def test_good_directory_loads(good_dir):
    assert transformer_weights.load_transformer(str(good_dir)).cfg.depth == PRESETS["tiny"].depth


def test_missing_key_is_named_with_its_shape(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.pop("transformer_blocks.1.attn2.to_v.weight"))
    with pytest.raises(WeightsError, match=r"missing key 'transformer_blocks\.1\.attn2\.to_v\.weight' "
                                              r"\(expected shape \(48, 48\)\)"):
        transformer_weights.load_transformer(path)


def test_extra_key_is_named(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.update({"lora.up.weight": np.zeros((3, 2), np.float32)}))
    with pytest.raises(WeightsError, match=r"unexpected key 'lora\.up\.weight' of shape \(3, 2\)"):
        transformer_weights.load_transformer(path)


def test_wrong_shape_names_key_and_both_shapes(good_dir, tmp_path):
    path = edited_copy(good_dir, WEIGHTS, tmp_path / "t",
                       lambda t: t.update({"proj_out.weight": np.zeros((16, 48), np.float32)}))
    with pytest.raises(WeightsError, match=r"'proj_out\.weight'.* has \(16, 48\), model expects \(32, 48\)"):
        transformer_weights.load_transformer(path)


def test_non_checkpoint_files_get_clear_messages(tmp_path):
    text = tmp_path / "PixArt-XL-2-512x512.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"PixArt-XL-2-512x512\.pth is not a PyTorch checkpoint: not a "
                                              r"torch\.save zip archive"):
        transformer_weights.load_transformer(str(text))
    text = tmp_path / "PixArt-XL-2-512x512.safetensors"
    text.write_text("this is not a checkpoint")
    with pytest.raises(WeightsError, match="is not a safetensors file"):
        transformer_weights.load_transformer(str(text))
    zipped = tmp_path / "PixArt-XL-2-1024-MS.pth"
    zipped.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(WeightsError, match="is not a PyTorch checkpoint"):
        transformer_weights.load_transformer(str(zipped))
    with pytest.raises(WeightsError, match="has no config.json"):
        transformer_weights.load_transformer(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(WeightsError, match="describes a 'AutoencoderKL', not a PixArt transformer"):
        transformer_weights.load_transformer(str(tmp_path))
    with pytest.raises(WeightsError, match="does not exist"):
        transformer_weights.load_transformer(str(tmp_path / "nope"))


def test_unknown_variant_name_asks_for_a_config(tmp_path, good_dir):
    path = str(tmp_path / "weights.safetensors")
    transformer_weights.save_original(transformer_weights.load_transformer(str(good_dir)), path)
    with pytest.raises(ValueError, match="cannot tell the PixArt variant from 'weights.safetensors'"):
        transformer_weights.load_transformer(path)
    assert transformer_weights.load_transformer(path, config="tiny").cfg == PRESETS["tiny"]


def rewritten_pth(tmp_path, edit):
    """A torch.save-layout file of one (4, 4) float32 tensor whose archive entries pass through `edit(name, data)`."""
    save_pth({"state_dict": {"w": np.arange(16, dtype=np.float32).reshape(4, 4)}}, str(tmp_path / "good.pth"))
    path = tmp_path / "edited.pth"
    with zipfile.ZipFile(tmp_path / "good.pth") as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, edit(name, src.read(name)))
    return path


def test_pth_views_are_checked_against_their_storage(tmp_path):
    short = rewritten_pth(tmp_path, lambda name, data: data[:32] if name.endswith("data/0") else data)
    with pytest.raises(WeightsError, match=r"edited\.pth: cannot read the checkpoint: a tensor of shape \(4, 4\) "
                                              r"\(offset 0, stride \(4, 1\)\) reads element 15 of a storage of 8"):
        load_pth(str(short))


def test_damaged_pth_archive_is_a_clear_error(tmp_path):
    path = rewritten_pth(tmp_path, lambda name, data: data)
    raw = bytearray(path.read_bytes())
    raw[raw.index(np.arange(16, dtype=np.float32).tobytes()) + 5] ^= 0xFF  # one byte of the tensor data changed
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"edited\.pth: cannot read the checkpoint: Bad CRC-32"):
        load_pth(str(path))


def raw_safetensors(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


@pytest.mark.parametrize("entry,message", [  # the safetensors package's wording
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}, "invalid shape, data type, or offset for tensor"),
    ({"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 16]}, "invalid shape, data type, or offset for tensor"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}, "invalid offset for tensor `w`"),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "invalid value: integer `-4`, expected usize"),
    ("F32", 'invalid type: string "F32", expected struct TensorInfo'),
    ({"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}, "unknown variant `X9`"),
])
def test_safetensors_entries_are_checked_against_the_file(tmp_path, entry, message):
    path = raw_safetensors(tmp_path / "w.safetensors", {"w": entry}, bytes(16))
    for read in (load_safetensors, lambda path: LazyTensors([path])):
        with pytest.raises(WeightsError, match=rf"^{re.escape(path)} is not a safetensors file, or is damaged: "
                                                  rf".*{re.escape(message)}"):
            read(path)
