"""Reading and writing PyTorch `.pth` files (the zip container of `torch.save`) without torch.

Only what state dicts need is unpickled: tensors, parameters, ordered dicts and plain Python values. Any other
global in the pickle is refused, so loading a checkpoint can never run code.
"""
import collections
import io
import pickle
import zipfile
import zlib

import ml_dtypes
import numpy as np

from pixart_jax.files import atomic_file
from pixart_jax.weights.errors import WeightsError

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(not isinstance(n, int) or n < 0 for n in (offset, *size, *stride)):
        raise ValueError(f"a tensor has an invalid layout (offset {offset!r}, shape {size}, stride {stride})")
    # the last element the view reads; a view must stay inside its storage (as_strided would read any memory)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(storage):
        raise ValueError(f"a tensor of shape {size} (offset {offset}, stride {stride}) reads element {last} of a "
                         f"storage of {len(storage)}: the file is damaged")
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False)
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


def load_pth(path: str):
    """The unpickled object of a `torch.save` zip file (tensors become NumPy arrays)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path} is not a PyTorch checkpoint (not a torch.save zip archive: {e})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsError(f"{path} is not a PyTorch checkpoint (no single data.pkl in the archive)")
        prefix = pickles[0][: -len("/data.pkl")]
        try:
            with archive.open(pickles[0]) as f:
                return _StateDictUnpickler(f, archive, prefix).load()
        # a damaged archive (bad CRC, truncated or corrupt entries) or a pickle that is not a state dict
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error,
                OSError) as e:
            raise WeightsError(f"{path}: cannot read the checkpoint: {e}") from None


class _Global:
    """Stands for a torch global (a function or storage class) in a pickle written without torch."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only writes callables as a REDUCE target; never called here
        raise TypeError(f"{self.module}.{self.name} is a placeholder")


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = _Global("collections", "OrderedDict")
_STORAGE_CLASSES = {np.dtype(dtype): _Global("torch", name) for name, dtype in STORAGE_DTYPES.items()}


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _TensorRef:
    def __init__(self, key, array):
        self.storage = _Storage(key, array)

    def __reduce__(self):
        a = self.storage.array
        strides = tuple(s // a.itemsize for s in a.strides)
        return _REBUILD_TENSOR, (self.storage, 0, a.shape, strides, False, _OrderedDictCall())


class _OrderedDictCall:
    def __reduce__(self):
        return _ORDERED_DICT, ()


class _StateDictPickler(pickle._Pickler):  # the pure-Python pickler lets save_global be replaced
    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[_Global] = save_global

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _STORAGE_CLASSES[obj.array.dtype], obj.key, "cpu", obj.array.size)
        return None


def save_pth(obj, path: str) -> None:
    """`torch.save`-compatible zip file of `obj` (dicts of NumPy arrays, nested), written atomically."""
    arrays = []

    def wrap(value):
        if isinstance(value, dict):
            return {k: wrap(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            arrays.append(np.require(value, requirements="C"))
            return _TensorRef(str(len(arrays) - 1), arrays[-1])
        return value

    buffer = io.BytesIO()
    _StateDictPickler(buffer, protocol=2).dump(wrap(obj))
    name = "archive"
    with atomic_file(path, overwrite=True) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", buffer.getvalue())
        z.writestr(f"{name}/byteorder", "little")
        for i, array in enumerate(arrays):
            z.writestr(f"{name}/data/{i}", array.tobytes())
        z.writestr(f"{name}/version", "3\n")
