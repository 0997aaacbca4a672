"""The `pixart-jax` console script, as a user runs it (in a subprocess), and its refusals of bad input (in this
process: the same `main`)."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from pixart_jax.cli import main as cli
from pixart_jax.models.transformer_config import PRESETS
from tests.helpers.commands import run_cli
from tests.helpers.files import read_only_folder


def config_only_pipeline(root, sample_size=32):
    """A pipeline folder with only its small config files (model_index.json, transformer/ and vae/ config.json):
    no weights, no tokenizer, so anything that loads a model fails."""
    (root / "transformer").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    config = PRESETS["tiny"].replace(sample_size=sample_size).to_diffusers()
    (root / "transformer" / "config.json").write_text(json.dumps(config))
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL",
                                                          "block_out_channels": [32, 32, 32, 32]}))
    return root


def refused(capsys, args, code=2):
    """The one-line error of a command that must exit with `code`."""
    assert cli(list(map(str, args))) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_sample_random_writes_a_png_replacing_an_existing_file_only_with_overwrite(tmp_path):
    out = tmp_path / "sample.png"
    out.write_bytes(b"the user's")
    run = run_cli("sample-random", "--size", "64", "--steps", "2", "--out", out)
    assert run.returncode == 1 and run.stderr.strip() == f"error: --out '{out}': {out} exists (pass --overwrite to " \
                                                         "replace it)"
    assert out.read_bytes() == b"the user's"
    run = run_cli("sample-random", "--size", "64", "--steps", "3", "--out", out, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert "compile" in run.stdout and "run" in run.stdout
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # an image, not a constant


def test_bad_sizes_and_outputs_are_refused_before_any_work(tmp_path, capsys):
    """One line each, nothing written; `generate --out` is checked before the model is even looked for. A value out
    of range exits with 2 (as argparse's errors), an output that cannot be written with 1."""
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "old-1.png").write_bytes(b"the user's")
    read_only = read_only_folder(tmp_path)
    err = refused(capsys, ["sample-random", "--size", "0", "--out", tmp_path / "a.png"])
    assert err == "error: --size must be a positive multiple of 16, got 0"
    cases = [
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
        assert message in refused(capsys, args, code=1)
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


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "num_inference_steps must be a positive integer, got 0"),
    (["--height", "60"], "height must be a positive multiple of 8, got 60 "),
    (["--width", "0"], "width must be a positive multiple of 8, got 0 "),
    (["--guidance", "nan"], "guidance_scale must be a finite number >= 0, got nan"),
    (["--guidance", "-1"], "guidance_scale must be a finite number >= 0, got -1.0"),
    (["--eta", "2"], "eta must be in [0, 1], got 2.0"),
    (["--num-images", "0"], "num_images_per_prompt must be an integer >= 1, got 0"),
    (["--backend", "torch", "--steps", "0"], "num_inference_steps must be a positive integer, got 0"),
])
def test_generate_checks_its_values_before_loading_a_model(tmp_path, capsys, args, message):
    """The folder has no weights: a value refused after loading would fail on those first (exit 1)."""
    model = config_only_pipeline(tmp_path / "pipe")
    err = refused(capsys, ["generate", "--model", model, "--prompt", "x", "--out", tmp_path / "x.png", *args])
    assert err.startswith(f"error: {message}"), err
    assert not (tmp_path / "x.png").exists()


def test_generate_checks_the_model_dependent_values_with_its_config_files(tmp_path, capsys):
    model = config_only_pipeline(tmp_path / "pipe", sample_size=16)
    err = refused(capsys, ["generate", "--model", model, "--prompt", "x", "--out", tmp_path / "x.png"])
    assert "resolution binning needs a transformer sample_size in [32, 64, 128, 256], this one has 16" in err


def test_seeds_out_of_range_are_one_line_before_anything_is_built(tmp_path, capsys):
    message = "--seed must be an integer from 0 to 2**32 - 1 = 4294967295, got "
    for seed in ("99999999999999999999", "-1"):
        for command in (["generate", "--model", tmp_path / "none", "--prompt", "x"], ["sample-random"]):
            err = refused(capsys, [*command, "--seed", seed, "--out", tmp_path / "x.png"])
            assert err == f"error: {message}{seed}", err
    assert not (tmp_path / "x.png").exists()


def test_torch_devices_this_machine_lacks_are_one_line(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = config_only_pipeline(tmp_path / "pipe")
    args = ["generate", "--model", model, "--prompt", "x", "--backend", "torch", "--out", tmp_path / "x.png"]
    err = refused(capsys, [*args, "--device", "cuda"])
    assert err.startswith("error: --device cuda: this torch has no CUDA"), err
    err = refused(capsys, [*args, "--device", "tpu"])
    assert err.startswith("error: --device tpu: not a torch device"), err
