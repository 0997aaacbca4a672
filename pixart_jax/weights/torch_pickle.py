"""Reading PyTorch `.pth` files (the zip container of `torch.save`) without torch.

Only what state dicts need is unpickled: tensors, parameters, ordered dicts and plain Python values. Any other
global in the pickle is refused, so loading a checkpoint can never run code.
"""
import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

from pixart_jax.weights.errors import CheckpointError

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    GLOBALS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return np.dtype(STORAGE_DTYPES[name])
        if (module, name) in self.GLOBALS:
            return self.GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (not part of a state dict)")

    def persistent_load(self, pid):
        _, dtype, key, _, _ = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=dtype)
        return self.storages[key]


def load_pth(path):
    """The unpickled object of a `torch.save` zip file (tensors become NumPy arrays)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save zip archive: {e})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (no single data.pkl in the archive)")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            try:
                return _StateDictUnpickler(f, archive, prefix).load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
                raise CheckpointError(f"{path}: cannot read the checkpoint: {e}") from None
