"""Finding and reading checkpoint files on disk, and writing output directories atomically."""
import contextlib
import json
import os
import shutil
import tempfile

from pixart_jax.weights.errors import CheckpointError
from pixart_jax.weights.safetensors_io import load_safetensors, read_header
from pixart_jax.weights.torch_pickle import load_pth

# Containers of released / training .pth files, in the order the reference loaders look at them.
PTH_STATE_KEYS = ("state_dict", "state_dict_ema", "ema", "model")


def read_safetensors_dir(directory, stem):
    """`stem.safetensors`, or the shards listed in `stem.safetensors.index.json`, merged into one dict."""
    single = os.path.join(directory, f"{stem}.safetensors")
    index = single + ".index.json"
    if os.path.exists(single):
        return load_safetensors(single)
    if not os.path.exists(index):
        raise CheckpointError(f"{directory} has neither {stem}.safetensors nor {stem}.safetensors.index.json")
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
        tensors.update(load_safetensors(os.path.join(directory, shard)))
    return tensors


def read_state_dict(path, pth_key=None):
    """A flat {key: array} from a `.safetensors` file or a `.pth` file (unwrapping `state_dict` / `ema`)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist or is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        obj = load_pth(path)
        if isinstance(obj, dict):
            keys = [pth_key] if pth_key else [k for k in PTH_STATE_KEYS if k in obj]
            if keys and isinstance(obj.get(keys[0]), dict):
                obj = obj[keys[0]]
        if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
            raise CheckpointError(f"{path} holds no state dict of tensors")
        return dict(obj)
    read_header(path)  # raises a clear error for anything that is not safetensors
    return load_safetensors(path)


@contextlib.contextmanager
def atomic_directory(dst):
    """Yields a temporary directory beside `dst`; on success it replaces `dst`, on failure it is removed."""
    dst = os.path.abspath(dst)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
