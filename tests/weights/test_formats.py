"""Our torch-free readers/writers of `.pth` and safetensors against torch and the safetensors library."""
import json

import ml_dtypes
import numpy as np
import pytest

from pixart_jax.weights import WeightsError, load_pth, load_safetensors, save_pth, save_safetensors
from pixart_jax.weights.files import read_weights
from tests.helpers.fixtures import shared_fixture


def sample_tensors():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 5)).astype(np.float32), "t": rng.standard_normal((5, 3)).astype(np.float32).T,
            "b": rng.standard_normal(4).astype(ml_dtypes.bfloat16), "i": np.arange(6, dtype=np.int64),
            "s": np.array(1.5, np.float16)}


def test_pth_round_trip_without_torch(tmp_path):
    tensors = sample_tensors()
    save_pth({"state_dict": tensors, "epoch": 3}, str(tmp_path / "x.pth"))
    back = load_pth(str(tmp_path / "x.pth"))
    assert back["epoch"] == 3
    for k, v in tensors.items():
        assert back["state_dict"][k].dtype == v.dtype and back["state_dict"][k].shape == v.shape
        np.testing.assert_array_equal(back["state_dict"][k], v)


def test_safetensors_round_trip_and_sharded_index(tmp_path):
    tensors = sample_tensors()
    save_safetensors({k: tensors[k] for k in ("w", "b")}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_safetensors({k: tensors[k] for k in ("t", "i", "s")}, str(tmp_path / "m-00002-of-00002.safetensors"))
    weight_map = {k: f"m-0000{1 if k in 'wb' else 2}-of-00002.safetensors" for k in tensors}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    back = read_weights(str(tmp_path), "x.bin", "m.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(WeightsError, match="has no weights: none of x.safetensors, y.bin"):
        read_weights(str(tmp_path), "x.safetensors", "y.bin")


def test_unpickler_refuses_arbitrary_globals(tmp_path):
    import pickle
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(WeightsError, match="refusing to unpickle .*print"):
        load_pth(str(tmp_path / "evil.pth"))


def test_agrees_with_torch_and_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    reference = torch.load(str(shared_fixture("controlnet-ms-tiny/controlnet.pth")), weights_only=True)["state_dict"]
    ours = load_pth(str(shared_fixture("controlnet-ms-tiny/controlnet.pth")))["state_dict"]
    assert ours.keys() == reference.keys()
    assert all(np.array_equal(ours[k], reference[k].numpy()) for k in reference)

    tensors = sample_tensors()
    save_pth({"state_dict": tensors}, str(tmp_path / "ours.pth"))
    loaded = torch.load(tmp_path / "ours.pth", weights_only=True)["state_dict"]
    save_safetensors(tensors, str(tmp_path / "ours.safetensors"))
    by_library = safetensors.torch.load_file(tmp_path / "ours.safetensors")
    for k, v in tensors.items():
        for t in (loaded[k], by_library[k]):
            assert tuple(t.shape) == v.shape
            np.testing.assert_array_equal(t.float().numpy(), v.astype(np.float32))
    safetensors.torch.save_file({"b": torch.ones(2, 3, dtype=torch.bfloat16)}, tmp_path / "lib.safetensors")
    np.testing.assert_array_equal(load_safetensors(str(tmp_path / "lib.safetensors"))["b"],
                                  np.ones((2, 3), ml_dtypes.bfloat16))


def test_lazy_reads_and_streaming_writes(tmp_path):
    from pixart_jax.weights.safetensors_io import LazyTensors, tensor_spec, write_safetensors

    tensors = sample_tensors()
    asked = []

    def produce(name):
        asked.append(name)
        return tensors[name]

    order = ["i", "w", "b", "t", "s"]
    write_safetensors(str(tmp_path / "x.safetensors"), {k: (tensors[k].dtype, tensors[k].shape) for k in order},
                      produce)
    assert asked == order  # one at a time, in file order
    lazy = read_weights(str(tmp_path), "x.safetensors", lazy=True)
    assert isinstance(lazy, LazyTensors) and list(lazy) == order
    assert tensor_spec(lazy, "b") == (np.dtype(ml_dtypes.bfloat16), (4,))
    for k, v in tensors.items():
        got = lazy[k]
        assert got.dtype == v.dtype and got.flags.writeable and not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, v)
    with pytest.raises(WeightsError, match="tensor 'w' is float32 \\(3, 5\\), its header entry says"):
        write_safetensors(str(tmp_path / "y.safetensors"), {"w": (np.float32, (5, 3))}, tensors.__getitem__)
    assert not list(tmp_path.glob("*y.safetensors*"))  # nor a (hidden) temporary
