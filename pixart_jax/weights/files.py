"""Finding and reading weight files (safetensors, torch `.pth`, sharded or not) on disk."""
import os

from pixart_jax.files import read_json
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.safetensors_io import LazyTensors, load_safetensors
from pixart_jax.weights.torch_pickle import load_pth

# Containers of released / training .pth files, in the order the reference loaders look at them.
PTH_STATE_KEYS = ("state_dict", "state_dict_ema", "ema", "model")
PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_model_config(directory, what, subfolder):
    """(path, dict) of `directory/config.json`; a WeightsError if there is none, pointing a pipeline folder to
    its `subfolder`."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        hint = (f" (it is a pipeline folder: pass its {subfolder}/ subfolder)"
                if os.path.isfile(os.path.join(directory, "model_index.json")) else "")
        raise WeightsError(f"{directory} is not a {what} folder: it has no config.json{hint}")
    return path, read_json(path)


def weight_files(directory, *names):
    """The files holding the weights of the first of `names` (e.g. "model.safetensors", "pytorch_model.bin")
    found in `directory`: the file itself, or the shards listed in `<name>.index.json`."""
    for name in names:
        single = os.path.join(directory, name)
        if os.path.exists(single):
            return [single]
        if os.path.exists(single + ".index.json"):
            shards = sorted(set(read_json(single + ".index.json")["weight_map"].values()))
            return [os.path.join(directory, shard) for shard in shards]
    raise WeightsError(f"{directory} has no weights: none of {', '.join(names)} (single or sharded with an "
                          ".index.json)")


def read_weights(directory, *names, lazy=False):
    """Tensors of the first of `names` found in `directory` (see weight_files), merged into one mapping. With
    `lazy`, safetensors are a LazyTensors that reads each tensor when it is looked up (.pth files are read whole)."""
    paths = weight_files(directory, *names)
    if lazy and not any(map(_is_pth, paths)):
        return LazyTensors(paths)
    tensors = {}
    for path in paths:
        tensors.update(read_state_dict(path))
    return tensors


def _is_pth(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_state_dict(path, pth_key=None):
    """A flat {key: array} from a `.safetensors` file or a `.pth` file (unwrapping `state_dict` / `ema`)."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path} does not exist or is not a file")
    is_pth = _is_pth(path)
    if not is_pth and path.endswith(PTH_SUFFIXES):
        raise WeightsError(f"{path} is not a PyTorch checkpoint: not a torch.save zip archive (a file in torch's "
                              "legacy pre-1.6 format must be re-saved with a current torch.save)")
    if is_pth:
        obj = load_pth(path)
        if isinstance(obj, dict):
            keys = [pth_key] if pth_key else [k for k in PTH_STATE_KEYS if k in obj]
            if keys and isinstance(obj.get(keys[0]), dict):
                obj = obj[keys[0]]
        if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
            raise WeightsError(f"{path} holds no state dict of tensors")
        return dict(obj)
    return load_safetensors(path)  # a clear error for anything that is not safetensors
