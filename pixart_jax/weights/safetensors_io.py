"""safetensors files as NumPy arrays (bf16 as ml_dtypes.bfloat16) through the safetensors package, plus what it
lacks: a {name: array} over sharded files that reads each tensor when looked up, and a writer that streams one
tensor at a time (the package's writers take every tensor at once)."""
import collections.abc
import json
import struct

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from pixart_jax.files import atomic_file
from pixart_jax.weights.errors import WeightsError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _damaged(path, error):
    return WeightsError(f"{path} is not a safetensors file, or is damaged: {error}")


def open_safetensors(path):
    """The package's handle on `path`, its header checked against the file (each tensor is read with a plain
    read when asked for, not memory-mapped); a WeightsError naming the file if it is not whole safetensors."""
    try:
        return safetensors.safe_open(path, framework="np", backend="pread")
    except safetensors.SafetensorError as e:
        raise _damaged(path, e) from None


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one file, as NumPy arrays."""
    with open_safetensors(path) as f:
        try:
            return f.get_tensors()
        except safetensors.SafetensorError as e:
            raise _damaged(path, e) from None


class LazyTensors(collections.abc.Mapping):
    """{name: array} over safetensors files in file order, each array read from disk when it is looked up: the
    process holds only the arrays its caller keeps, so a checkpoint larger than memory can be converted one
    tensor at a time. `spec(name)` gives (dtype, shape) without reading."""

    def __init__(self, paths):
        self._where = {}
        for path in paths:
            handle = open_safetensors(path)
            self._where.update((name, (path, handle)) for name in handle.offset_keys())

    def subset(self, names):
        """The same files restricted to `names` (nothing is read)."""
        view = LazyTensors([])
        view._where = {name: self._where[name] for name in names}
        return view

    def spec(self, name):
        path, handle = self._where[name]
        view = handle.get_slice(name)
        if view.get_dtype() not in DTYPES:
            raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {view.get_dtype()}")
        return DTYPES[view.get_dtype()], tuple(view.get_shape())

    def __getitem__(self, name):
        path, handle = self._where[name]
        try:
            return handle.get_tensor(name)
        except safetensors.SafetensorError as e:
            raise _damaged(path, e) from None

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def select(tensors, names):
    """`tensors` restricted to `names`, without reading anything from a LazyTensors."""
    if isinstance(tensors, LazyTensors):
        return tensors.subset(names)
    return {name: tensors[name] for name in names}


def tensor_spec(tensors, name):
    """(dtype, shape) of `tensors[name]`, without reading it when `tensors` is a LazyTensors."""
    if isinstance(tensors, LazyTensors):
        return tensors.spec(name)
    return np.dtype(tensors[name].dtype), tuple(tensors[name].shape)


def _header(specs, metadata):
    """The header block of a file holding `specs` ({name: (dtype, shape)}) in that order: its 8-byte size, then
    JSON padded to 8 bytes."""
    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        dtype = np.dtype(dtype)
        if dtype not in NAMES:
            raise WeightsError(f"cannot store tensor {name!r} of dtype {dtype} in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def write_safetensors(path, specs, produce, metadata=None):
    """Writes a safetensors file one tensor at a time: `specs` is {name: (dtype, shape)} in file order and
    `produce(name)` returns that tensor (called once per name, in that order), so the writer never holds more than
    one tensor. Through `atomic_file`: `path` is replaced only when complete."""
    header = _header(specs, metadata)
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for name, (dtype, shape) in specs.items():
            array = np.require(produce(name), requirements="C")
            if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
                raise WeightsError(f"tensor {name!r} is {array.dtype} {array.shape}, its header entry says "
                                   f"{np.dtype(dtype)} {tuple(shape)}")
            f.write(array.tobytes())


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """Writes {name: array} with the package's writer, through `atomic_file`."""
    arrays = {name: np.require(value, requirements="C") for name, value in tensors.items()}
    metadata = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    with atomic_file(path, overwrite=True) as tmp:
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
