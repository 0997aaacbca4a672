"""The `pixart-jax` console script, as a user runs it (in a subprocess), and its refusals of bad input (in this
process: the same `main`)."""
import re

import numpy as np
from PIL import Image

from pixart_jax.cli import main as cli
from tests.helpers.commands import run_cli
from tests.helpers.files import read_only_folder


def test_sample_random_writes_a_png(tmp_path):
    out = tmp_path / "sample.png"
    run = run_cli("sample-random", "--size", "64", "--steps", "3", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "compile" in run.stdout and "run" in run.stdout
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # an image, not a constant
    # an existing image is the user's: replaced only with --overwrite
    before = out.read_bytes()
    run = run_cli("sample-random", "--size", "64", "--steps", "2", "--out", out)
    assert run.returncode == 1 and run.stderr.strip() == f"error: --out '{out}': {out} exists (pass --overwrite to " \
                                                         "replace it)"
    assert out.read_bytes() == before
    run = run_cli("sample-random", "--size", "64", "--steps", "2", "--out", out, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() != before


def test_bad_sizes_and_outputs_are_refused_before_any_work(tmp_path, capsys):
    """One line each, nothing written; `generate --out` is checked before the model is even looked for."""
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "old-1.png").write_bytes(b"the user's")
    read_only = read_only_folder(tmp_path)
    cases = [
        (["sample-random", "--size", "0", "--out", tmp_path / "a.png"], "--size must be a positive multiple of 16, "
                                                                          "got 0"),
        (["sample-random", "--out", tmp_path / "folder.png"], f"{tmp_path / 'folder.png'} is a folder"),
        (["sample-random", "--out", read_only / "a.png"], f"{read_only} is not writable"),
        (["generate", "--model", tmp_path / "none", "--prompt", "x", "--out", tmp_path / "folder.png"],
         "is a folder; name a .png file"),
        (["generate", "--model", tmp_path / "none", "--prompt", "x", "--prompt", "y", "--out", read_only / "a.png"],
         f"{read_only} is not writable"),
        (["generate", "--model", tmp_path / "none", "--prompt", "x", "--prompt", "y", "--out", tmp_path / "old.png"],
         f"{tmp_path / 'old-1.png'} exists (pass --overwrite to replace it)"),
    ]
    for args, message in cases:
        assert cli(list(map(str, args))) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "old-1.png", "read-only"]
    assert (tmp_path / "old-1.png").read_bytes() == b"the user's"


def test_sizes_too_large_for_memory_are_refused_naming_the_limit(tmp_path, capsys):
    """Before tracing (the position table the trace builds) and before running (XLA's estimate of the program)."""
    out = tmp_path / "big.png"
    for size, what in ((262144, "the position embedding of 262144x262144"), (4096, "generating 1 image(s) of "
                                                                                    "4096x4096")):
        assert cli(["sample-random", "--size", str(size), "--steps", "1", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(rf"error: {re.escape(what)}.* needs an estimated [\d.]+ GiB, more than the [\d.]+ GiB of "
                            r"memory available on this host: use a smaller size or fewer images", err), err
    assert not out.exists()
