"""atomic_file: a file appears whole or not at all, an old one survives a failed write, and destinations are
refused as check_destination says."""
import os

import pytest

from pixart_jax.files import FileError, atomic_file
from tests.helpers.files import read_only_folder


def write(dst, text, **kwargs):
    with atomic_file(str(dst), **kwargs) as tmp:
        assert os.path.dirname(tmp) == os.path.dirname(os.path.abspath(dst)) and not os.path.exists(tmp)
        with open(tmp, "w") as f:
            f.write(text)


def test_success_creates_the_file_and_its_folder(tmp_path):
    dst = tmp_path / "new" / "out.txt"
    write(dst, "hello")
    assert dst.read_text() == "hello" and os.listdir(dst.parent) == ["out.txt"]
    write(dst, "again", overwrite=True)
    assert dst.read_text() == "again" and os.listdir(dst.parent) == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dst = tmp_path / "out.txt"
    dst.write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_file(str(dst), overwrite=True) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("half way")
    assert dst.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_destinations_are_refused_as_check_destination_says(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    (tmp_path / "folder").mkdir()
    read_only = read_only_folder(tmp_path)
    for dst, kwargs, message in (
            (tmp_path / "mine.txt", {}, "refusing to replace the existing file"),
            (tmp_path / "folder", {"overwrite": True}, "it is a folder, and the output is a file"),
            (tmp_path / "mine.txt", {"overwrite": True, "keep": [str(tmp_path / "mine.txt")]}, "the source"),
            (tmp_path / "folder" / "x.txt", {"keep": [str(tmp_path / "folder")]}, "the source"),
            (read_only / "x.txt", {}, "is not writable")):
        with pytest.raises(FileError, match=message):
            write(dst, "new", **kwargs)
    assert (tmp_path / "mine.txt").read_text() == "mine" and os.listdir(tmp_path / "folder") == []
    assert sorted(os.listdir(tmp_path)) == ["folder", "mine.txt", "read-only"]
