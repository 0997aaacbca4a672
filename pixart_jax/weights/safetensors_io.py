"""Reading and writing the safetensors format with NumPy alone (bf16 included via ml_dtypes, no torch).

Layout: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}}, then raw bytes.
"""
import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from pixart_jax.weights.errors import CheckpointError

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
            raise CheckpointError(f"{path} is not a safetensors file (bad header size)")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


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


def _entry(path, name, info, size):
    """(dtype, shape, begin, end) of header entry `name`, checked against the `size` bytes of the data section."""
    def bad(problem):
        return CheckpointError(f"{path}: tensor {name!r} {problem} (the file is damaged or not safetensors)")

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


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """Writes atomically: a temporary file beside `path`, renamed into place when complete."""
    header, offset, arrays = {}, 0, []
    for name, value in tensors.items():
        array = np.require(value, requirements="C")
        if array.dtype not in NAMES:
            raise CheckpointError(f"cannot store tensor {name!r} of dtype {array.dtype} in safetensors")
        header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for array in arrays:
                f.write(array.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
