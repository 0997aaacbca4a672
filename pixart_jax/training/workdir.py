"""A run's folder (WORKDIR): checked before anything is written, locked while a run uses it, moved aside only on
request, and its config.yaml written whole.

The lock is an advisory `flock` on WORKDIR/.lock, which the kernel releases when its process ends however it ends,
so a run killed with SIGKILL never blocks the next one.
"""
import contextlib
import fcntl
import os

from pixart_jax.files import FileError, atomic_file, check_writable
from pixart_jax.training.config import ConfigError
from pixart_jax.training.errors import RunError

LOCK_NAME = ".lock"
REPLACED_PREFIX = "replaced-"


class WorkdirBusyError(RunError):
    """Another run holds the workdir's lock."""


def check_workdir(path: str) -> str:
    """The absolute workdir path; ConfigError if it is a file or cannot be written (or created)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"workdir {path} is a file, not a folder")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir {path} is not writable")
    try:
        check_writable(path)
    except FileError as e:
        raise ConfigError(f"workdir: {e}") from None
    return path


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
    """Creates `workdir` and holds its lock for the block (when `enabled`: process 0 of a run); WorkdirBusyError
    if another live process holds it."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirBusyError(f"workdir {workdir} is in use by {holder}: two runs in one workdir would "
                                   "overwrite each other's checkpoints and metrics. Wait for it to finish, or use "
                                   "another workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def move_run_aside(workdir: str) -> str:
    """Moves everything a previous run left in `workdir` (all but the lock and earlier replaced-N folders) into a
    new WORKDIR/replaced-N; returns its path."""
    n = 1
    while os.path.exists(os.path.join(workdir, f"{REPLACED_PREFIX}{n}")):
        n += 1
    entries = [e for e in os.listdir(workdir) if e != LOCK_NAME and not e.startswith(REPLACED_PREFIX)]
    destination = os.path.join(workdir, f"{REPLACED_PREFIX}{n}")
    os.mkdir(destination)
    for entry in entries:
        os.replace(os.path.join(workdir, entry), os.path.join(destination, entry))
    return destination


def write_text(path: str, text: str) -> None:
    """Writes (or replaces) `path` through `atomic_file`, so it is never found half written."""
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as f:
        f.write(text)
