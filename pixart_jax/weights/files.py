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


def read_json(path):
    """A JSON file's content; a CheckpointError names the file if it is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def read_model_config(directory, what, subfolder):
    """(path, dict) of `directory/config.json`; a CheckpointError if there is none, pointing a pipeline folder to
    its `subfolder`."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        hint = (f" (it is a pipeline folder: pass its {subfolder}/ subfolder)"
                if os.path.isfile(os.path.join(directory, "model_index.json")) else "")
        raise CheckpointError(f"{directory} is not a {what} folder: it has no config.json{hint}")
    return path, read_json(path)


def read_weights(directory, *names):
    """Tensors of the first of `names` (e.g. "model.safetensors", "pytorch_model.bin") found in `directory`,
    as one file or as the shards listed in `<name>.index.json`, merged into one dict."""
    for name in names:
        single = os.path.join(directory, name)
        if os.path.exists(single):
            return read_state_dict(single)
        if os.path.exists(single + ".index.json"):
            shards = sorted(set(read_json(single + ".index.json")["weight_map"].values()))
            tensors = {}
            for shard in shards:
                tensors.update(read_state_dict(os.path.join(directory, shard)))
            return tensors
    raise CheckpointError(f"{directory} has no weights: none of {', '.join(names)} (single or sharded with an "
                          ".index.json)")


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
