"""Files the library reads and writes whatever they hold: JSON, and files and folders written atomically without
replacing anything a user had (the folder we wrote carries an OWNER_MARK listing its entries)."""
import contextlib
import json
import os
import secrets
import shutil


class FileError(ValueError):
    """A file or folder that cannot be read, or a destination that cannot (or must not) be written; the message
    names the path and why."""


def read_json(path):
    """A JSON file's content; a FileError names the file if it is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FileError(f"cannot read {path}: {e}") from None


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
    """The nearest existing folder above `path` (where it would be created); a FileError if that is a file
    or cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FileError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FileError(f"cannot write {path}: {parent} is not writable")
    return parent


def check_apart(dst: str, sources) -> None:
    """A FileError if `dst` is, holds or lies inside one of `sources` (whether or not it exists yet)."""
    for source in sources:
        if _overlaps(dst, source):
            raise FileError(f"refusing to write {dst}: it is, holds or lies inside the source {source}, which "
                            "writing there would destroy; choose another destination")


def check_destination(dst: str, *, directory: bool, overwrite: bool = False, keep=()) -> None:
    """Refuses, with a FileError naming the reason, to write `dst` (a folder if `directory`, else a file) where
    that could lose something: when it is, holds or lies inside one of the paths in `keep` (the sources: refused
    even with `overwrite`, and even when `dst` does not exist yet); when it exists and is of the other kind, or
    (without `overwrite`) is a file or a folder pixart-jax did not write; or when its folder cannot be written."""
    check_writable(dst)
    check_apart(dst, keep)
    if not os.path.lexists(dst):
        return
    if directory != os.path.isdir(dst):
        kind, wanted = ("a folder", "a file") if os.path.isdir(dst) else ("a file", "a folder")
        raise FileError(f"refusing to write {dst}: it is {kind}, and the output is {wanted}")
    if overwrite or (directory and _ours(dst)):
        return
    if directory:
        shown = sorted(set(os.listdir(dst)) - {OWNER_MARK})
        listing = ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")
        raise FileError(f"refusing to replace {dst}: it exists and was not written by pixart-jax (it holds "
                              f"{listing}); choose a new destination, or pass --overwrite (overwrite=True) to "
                              "replace it")
    raise FileError(f"refusing to replace the existing file {dst}; choose a new destination, or pass "
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


def _fsync(path):
    """Flushes `path` (a file, or a folder: the entries just renamed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(dst: str, *, overwrite: bool = False, keep=()):
    """Yields a new path beside `dst` to write; on success the file there is flushed to disk and becomes `dst`, on
    failure it is removed and an existing `dst` stays as it was. `dst` is checked first (`check_destination`: an
    existing file is replaced only with `overwrite`; never a folder, nor anything overlapping `keep`), and again
    just before it is replaced. Its folder is created if needed."""
    dst = os.path.abspath(dst)
    check_destination(dst, directory=False, overwrite=overwrite, keep=keep)
    parent, base = os.path.dirname(dst), os.path.basename(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = _fresh_name(parent, base, "tmp")
    try:
        yield tmp
        _fsync(tmp)
        check_destination(dst, directory=False, overwrite=overwrite, keep=keep)
        os.replace(tmp, dst)
        _fsync(parent)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
