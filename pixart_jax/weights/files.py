"""Finding and reading checkpoint files on disk, and writing output directories atomically."""
import contextlib
import json
import os
import secrets
import shutil

from pixart_jax.weights.errors import CheckpointError
from pixart_jax.weights.safetensors_io import LazyTensors, load_safetensors, read_header
from pixart_jax.weights.torch_pickle import load_pth

# Containers of released / training .pth files, in the order the reference loaders look at them.
PTH_STATE_KEYS = ("state_dict", "state_dict_ema", "ema", "model")
PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


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
    raise CheckpointError(f"{directory} has no weights: none of {', '.join(names)} (single or sharded with an "
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
        raise CheckpointError(f"{path} does not exist or is not a file")
    is_pth = _is_pth(path)
    if not is_pth and path.endswith(PTH_SUFFIXES):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: not a torch.save zip archive (a file in torch's "
                              "legacy pre-1.6 format must be re-saved with a current torch.save)")
    if is_pth:
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


# Written into every directory we produce, listing its entries: a directory holding only those (and this file) is
# ours to replace; anything else at a destination belongs to the user and is never replaced unasked.
OWNER_MARK = ".written-by-pixart-jax"


def _overlaps(path, other):
    """Whether `path` is, contains or lies inside `other` (symlinks resolved)."""
    a, b = os.path.realpath(path), os.path.realpath(other)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def _ours(directory):
    """Whether `directory` is empty, or holds only what one of our writers put there (per its OWNER_MARK)."""
    entries = set(os.listdir(directory)) - {OWNER_MARK}
    if not entries:
        return True
    try:
        with open(os.path.join(directory, OWNER_MARK)) as f:
            written = json.load(f)["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return entries <= set(written)


def check_writable(path: str) -> str:
    """The nearest existing folder above `path` (where it would be created); a CheckpointError if that is a file
    or cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CheckpointError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {path}: {parent} is not writable")
    return parent


def check_destination(dst: str, *, directory: bool, overwrite: bool = False, keep=()) -> None:
    """Refuses, with a CheckpointError naming the reason, to write `dst` (a folder if `directory`, else a file) where
    that could lose something: when it exists and is or overlaps one of the paths in `keep` (the sources: refused
    even with `overwrite`), is of the other kind, or (without `overwrite`) is a file or a folder pixart-jax did not
    write; or when its folder cannot be written."""
    check_writable(dst)
    if not os.path.lexists(dst):
        return
    for source in keep:
        if _overlaps(dst, source):
            raise CheckpointError(f"refusing to write {dst}: it is, holds or lies inside the source {source}, which "
                                  "writing there would destroy; choose another destination")
    if directory != os.path.isdir(dst):
        kind, wanted = ("a folder", "a file") if os.path.isdir(dst) else ("a file", "a folder")
        raise CheckpointError(f"refusing to write {dst}: it is {kind}, and the output is {wanted}")
    if overwrite or (directory and _ours(dst)):
        return
    if directory:
        shown = sorted(set(os.listdir(dst)) - {OWNER_MARK})
        listing = ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")
        raise CheckpointError(f"refusing to replace {dst}: it exists and was not written by pixart-jax (it holds "
                              f"{listing}); choose a new destination, or pass --overwrite (overwrite=True) to "
                              "replace it")
    raise CheckpointError(f"refusing to replace the existing file {dst}; choose a new destination, or pass "
                          "--overwrite (overwrite=True) to replace it")


def _fresh_name(parent, base, kind):
    return os.path.join(parent, f".{base}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_directory(dst: str, *, overwrite: bool = False, keep=()):
    """Yields a new folder beside `dst` to fill; on success it becomes `dst` (marked as ours), on failure it is
    removed. `dst` is checked first (`check_destination`: by default only a folder we wrote, or an empty one, is
    replaced; never one overlapping `keep`), and again just before it is replaced. The folder gets the usual
    permissions (the umask's), not a temporary directory's 0700."""
    dst = os.path.abspath(dst)
    check_destination(dst, directory=True, overwrite=overwrite, keep=keep)
    parent, base = os.path.dirname(dst), os.path.basename(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = _fresh_name(parent, base, "tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        with open(os.path.join(tmp, OWNER_MARK), "w") as f:
            json.dump({"entries": sorted(os.listdir(tmp))}, f)
        check_destination(dst, directory=True, overwrite=overwrite, keep=keep)
        if os.path.lexists(dst):  # moved aside first, so a kill in between loses neither version
            old = _fresh_name(parent, base, "old")
            os.replace(dst, old)
            os.replace(tmp, dst)
            if os.path.islink(old):  # a replaced link goes, not what it points to
                os.remove(old)
            else:
                shutil.rmtree(old)
        else:
            os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
