"""`pixart-jax convert` / `python -m convert.pixart`: conversions between layouts, inspect, nothing left behind on
failure, and nothing a user had at the destination lost: every file that existed is still there, byte for byte."""
import os
import stat

import numpy as np
import pytest
from flax import nnx

from pixart_jax.cli import main as cli
from pixart_jax.files import OWNER_MARK
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.weights import conversion
from pixart_jax.weights import transformer as transformer_weights
from pixart_jax.weights.files import read_state_dict
from pixart_jax.weights.nnx_state import flat_arrays
from tests.helpers.commands import run_cli, run_module
from tests.helpers.files import read_only_folder, snapshot
from tests.helpers.fixtures import shared_fixture


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(7))
    path = tmp_path_factory.mktemp("src") / "transformer"
    transformer_weights.save_diffusers(model, str(path))
    return model, str(path)


def test_chain_of_conversions_preserves_every_parameter(model_dir, tmp_path):
    model, src = model_dir
    jax_dir = conversion.convert(src, str(tmp_path / "jax"), "jax")
    pth = conversion.convert(jax_dir, str(tmp_path / "orig"), "original")
    assert pth.endswith("PixArt.pth")
    back = conversion.convert(pth, str(tmp_path / "diffusers"), "diffusers", config="tiny")
    want, got = flat_arrays(model), flat_arrays(transformer_weights.load_transformer(back))
    for key in want:
        if key != "y_embedding":  # diffusers stores no null caption
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def test_cli_inspect_and_failure_leaves_nothing(model_dir, tmp_path):
    _, src = model_dir
    run = run_module("convert.pixart", "inspect", src)
    assert run.returncode == 0, run.stderr
    assert "diffusers layout" in run.stdout and "transformer_blocks.1.attn1.to_q.weight" in run.stdout
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"garbage")
    dst = tmp_path / "out"
    run = run_module("convert.pixart", "--src", bad, "--dst", dst, "--to", "diffusers", "--config", "tiny")
    assert run.returncode == 1 and "is not a PyTorch checkpoint" in run.stderr
    assert list(tmp_path.iterdir()) == [bad]


def convert(capsys, *args):
    """`pixart-jax convert ARGS` in this process: (exit code, stderr)."""
    code = cli(["convert", *map(str, args)])
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def user_folder(model_dir, tmp_path):
    """A folder of the user's: a checkpoint (the source of some conversions), notes and a subfolder."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    conversion.convert(model_dir[1], str(folder / "PixArt-tiny.pth"), "original")
    return folder


@pytest.fixture
def pipeline_folder(model_dir, tmp_path):
    """A pipeline folder: model_index.json, the transformer and (stand-in) files of its other components."""
    folder = tmp_path / "pipe"
    transformer_weights.save_diffusers(transformer_weights.load_transformer(model_dir[1]), str(folder / "transformer"))
    (folder / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
    for part in ("text_encoder", "vae", "tokenizer", "scheduler"):
        (folder / part).mkdir()
        (folder / part / "config.json").write_text(f'{{"part": "{part}"}}')
    return folder


def test_a_destination_that_is_or_holds_the_source_is_never_written(user_folder, pipeline_folder, capsys):
    before = {f: snapshot(f) for f in (user_folder, pipeline_folder)}
    src = user_folder / "PixArt-tiny.pth"
    for args in ([src, user_folder, "jax"], [src, user_folder, "jax", "--overwrite"],
                 [src, src, "original", "--overwrite"], [pipeline_folder, pipeline_folder, "diffusers", "--overwrite"],
                 [pipeline_folder / "transformer", pipeline_folder, "diffusers", "--overwrite"],
                 [pipeline_folder, pipeline_folder / "transformer", "diffusers", "--overwrite"],
                 *([pipeline_folder / "transformer", pipeline_folder / "transformer" / "sub", to]  # a new folder
                   for to in ("jax", "diffusers", "original")),
                 [pipeline_folder / "transformer", pipeline_folder / "transformer", "original"]):
        code, err = convert(capsys, "--src", args[0], "--dst", args[1], "--to", args[2], "--config", "tiny", *args[3:])
        assert code == 1 and err.startswith("error: refusing to write") and "source" in err and "\n" not in err, err
    assert {f: snapshot(f) for f in before} == before


def test_an_existing_destination_is_replaced_only_if_ours_or_with_overwrite(model_dir, user_folder, capsys):
    _, src = model_dir
    before = snapshot(user_folder)
    code, err = convert(capsys, "--src", src, "--dst", user_folder, "--to", "diffusers")
    assert code == 1 and "refusing to replace" in err and "was not written by pixart-jax" in err
    assert "notes.txt" in err and "--overwrite" in err
    code, err = convert(capsys, "--src", src, "--dst", user_folder / "PixArt-tiny.pth", "--to", "original")
    assert code == 1 and "refusing to replace the existing file" in err
    code, err = convert(capsys, "--src", src, "--dst", user_folder, "--to", "original", "--config", "tiny")
    assert code == 0  # a new file beside the user's
    assert snapshot(user_folder, ignore=["PixArt.pth"]) == before and (user_folder / "PixArt.pth").is_file()

    ours = user_folder.parent / "ours"
    for _ in range(2):  # a folder we wrote is ours to replace
        assert convert(capsys, "--src", src, "--dst", ours, "--to", "jax")[0] == 0
    assert sorted(os.listdir(ours)) == [OWNER_MARK, "config.json", "params"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o777 & ~umask  # not a temporary directory's 0700
    (ours / "added-by-me.txt").write_text("keep")
    code, err = convert(capsys, "--src", src, "--dst", ours, "--to", "jax")
    assert code == 1 and "added-by-me.txt" in err

    assert convert(capsys, "--src", src, "--dst", user_folder, "--to", "diffusers", "--overwrite")[0] == 0
    assert sorted(os.listdir(user_folder)) == [OWNER_MARK, "config.json", "diffusion_pytorch_model.safetensors"]
    assert sorted(p.name for p in user_folder.parent.iterdir()) == ["mine", "ours"]  # nothing left beside them


def test_unwritable_destinations_are_one_line_errors(model_dir, tmp_path, capsys):
    _, src = model_dir
    (tmp_path / "file").write_text("mine")
    read_only = read_only_folder(tmp_path)
    for dst, message in ((tmp_path / "file", "it is a file, and the output is a folder"),
                         (tmp_path / "file" / "out", f"{tmp_path / 'file'} is a file, not a folder"),
                         (read_only / "out", f"{read_only} is not writable")):
        code, err = convert(capsys, "--src", src, "--dst", dst, "--to", "jax")
        assert code == 1 and err.startswith("error: ") and message in err and "\n" not in err, err
    code, err = convert(capsys, "--src", src, "--dst", read_only, "--to", "original")
    assert code == 1 and f"cannot write into {read_only}: it is not writable" in err
    assert (tmp_path / "file").read_text() == "mine"


def test_pixart_jax_convert_is_installed(model_dir, tmp_path):
    run = run_cli("convert", "--src", model_dir[1], "--dst", tmp_path / "jax", "--to", "jax")
    assert run.returncode == 0, run.stderr
    assert transformer_weights.detect_format(str(tmp_path / "jax")) == "jax"


def test_controlnet_checkpoints_convert_and_inspect(model_dir, tmp_path, capsys):
    """A ControlNet-Transformer (the official fixture's folder) through `convert` to ours and back to the official
    folder and a .pth, every parameter bit for bit; diffusers has no layout for it (refused, nothing written)."""
    fixture = str(shared_fixture("controlnet-ms-tiny"))
    from pixart_jax.weights.controlnet import load_controlnet

    reference = {k: np.asarray(v) for k, v in flat_arrays(load_controlnet(fixture)).items()}
    ours, official, pth = (str(tmp_path / name) for name in ("jax", "official", "controlnet.pth"))
    for src, dst, to in ((fixture, ours, "jax"), (ours, official, "original"), (official, pth, "original")):
        assert cli(["convert", "--src", src, "--dst", dst, "--to", to]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {dst}"
    for path in (ours, official):
        arrays = flat_arrays(load_controlnet(path))
        assert arrays.keys() == reference.keys()
        assert all(np.array_equal(np.asarray(arrays[k]), reference[k]) for k in reference), path
    written, expected = read_state_dict(pth), read_state_dict(os.path.join(official, "controlnet.pth"))
    assert written.keys() == expected.keys() and all(np.array_equal(v, written[k]) for k, v in expected.items())
    assert conversion.is_controlnet(pth) and not conversion.is_controlnet(model_dir[1])
    assert cli(["convert", "--src", official, "--dst", str(tmp_path / "d"), "--to", "diffusers"]) == 1
    assert "is a ControlNet-Transformer, which has no diffusers layout" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert cli(["inspect", official]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{official}: ControlNet-Transformer, official layout,") and "controlnet.0.before_proj" in out
