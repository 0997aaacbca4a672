"""For tests that check nothing a user had is lost: byte-for-byte pictures of folders, and a folder nobody may
write into."""
import os
import pathlib
import stat


def snapshot(root, ignore=()):
    """{relative path: file bytes, or None for a folder} of everything under `root` but the names in `ignore`."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*")) if not set(p.relative_to(root).parts) & set(ignore)}


def read_only_folder(tmp_path):
    """A folder no file can be created in: a 0555 folder, or for root (who writes anyway) /proc/self."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return pathlib.Path("/proc/self") if os.access(folder, os.W_OK) else folder


def write_snapshot(picture, root):
    """Recreates a `snapshot` picture under `root`."""
    root = pathlib.Path(root)
    for name, data in picture.items():
        if data is None:
            (root / name).mkdir(parents=True, exist_ok=True)
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
