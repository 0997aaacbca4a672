"""Reading and writing the safetensors format with NumPy alone (bf16 included via ml_dtypes, no torch).

Layout: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}}, then raw bytes.
"""
import collections.abc
import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from pixart_jax.weights.errors import WeightsError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 2**20


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, offset of the data section)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= MAX_HEADER:
            raise WeightsError(f"{path} is not a safetensors file (bad header size)")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path} is not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


def _entry(path, name, info, size):
    """(dtype, shape, begin, end) of header entry `name`, checked against the `size` bytes of the data section."""
    def bad(problem):
        return WeightsError(f"{path}: tensor {name!r} {problem} (the file is damaged or not safetensors)")

    if not isinstance(info, dict):
        raise bad(f"has a header entry that is not a mapping: {info!r}")
    if info.get("dtype") not in DTYPES:
        raise bad(f"has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise bad(f"has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size):
        raise bad(f"has data offsets {offsets!r} outside the {size} bytes of tensor data")
    dtype = DTYPES[info["dtype"]]
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise bad(f"of shape {tuple(shape)} and dtype {info['dtype']} needs {math.prod(shape) * dtype.itemsize} "
                  f"bytes, its offsets {offsets} span {offsets[1] - offsets[0]}")
    return dtype, shape, *offsets


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one file as read-only NumPy arrays backed by a memory map."""
    header, _, start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = len(data) - start
    tensors = {}
    for name, info in header.items():
        dtype, shape, begin, end = _entry(path, name, info, size)
        tensors[name] = data[start + begin:start + end].view(dtype).reshape(shape)
    return tensors


class LazyTensors(collections.abc.Mapping):
    """{name: array} over safetensors files, each array read from disk when it is looked up (a plain read, no
    memory map): the process holds only the arrays its caller keeps, so a checkpoint larger than memory can be
    converted one tensor at a time. `spec(name)` gives (dtype, shape) without reading."""

    def __init__(self, paths):
        self._where = {}
        for path in paths:
            header, _, start = read_header(path)
            size = os.path.getsize(path) - start
            for name, info in header.items():
                dtype, shape, begin, end = _entry(path, name, info, size)
                self._where[name] = (path, start, (dtype, tuple(shape), (begin, end)))

    def subset(self, names):
        """The same files restricted to `names` (nothing is read)."""
        view = LazyTensors([])
        view._where = {name: self._where[name] for name in names}
        return view

    def spec(self, name):
        _, _, (dtype, shape, _) = self._where[name]
        return dtype, shape

    def __getitem__(self, name):
        path, start, (dtype, shape, (begin, end)) = self._where[name]
        data = np.empty(end - begin, np.uint8)
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(memoryview(data)) != data.size:
                raise WeightsError(f"{path} is truncated: tensor {name!r} ends past the end of the file")
        return data.view(dtype).reshape(shape)

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


def write_safetensors(path, specs, produce, metadata=None):
    """Writes a safetensors file one tensor at a time: `specs` is {name: (dtype, shape)} in file order and
    `produce(name)` returns that tensor (called once per name, in that order), so the writer never holds more than
    one tensor. Atomic: a temporary file beside `path`, renamed into place when complete."""
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
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for name, (dtype, shape) in specs.items():
                array = np.require(produce(name), requirements="C")
                if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
                    raise WeightsError(f"tensor {name!r} is {array.dtype} {array.shape}, its header entry says "
                                          f"{np.dtype(dtype)} {tuple(shape)}")
                f.write(array.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """Writes {name: array} atomically (see write_safetensors)."""
    arrays = {name: np.asarray(value) for name, value in tensors.items()}
    write_safetensors(path, {name: (a.dtype, a.shape) for name, a in arrays.items()}, arrays.__getitem__, metadata)
