"""`pixart-jax generate` on a tiny pipeline directory in the diffusers layout, as a user runs it."""

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.testing.reference_pipeline import build_pipeline, build_sigma_pipeline  # noqa: E402
from tests.helpers.commands import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Sampled at 256-px buckets (a micro-conditioned model would bin every size to about 1024 px: 4 guided images
    of that need about 12 GiB)."""
    path = tmp_path_factory.mktemp("pixart") / "tiny"
    build_pipeline(path, micro=False, scheduler=diffusers.DPMSolverMultistepScheduler())
    return str(path)


def generate(*args):
    return run_cli("generate", *args)


def test_generate_writes_png_of_requested_size(model_dir, tmp_path):
    out = tmp_path / "cat.png"
    run = generate("--model", model_dir, "--prompt", "a small red circle", "--steps", "3", "--height", "64",
                   "--width", "96", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "compile" in run.stdout and "run" in run.stdout and "denoising" in run.stderr
    image = Image.open(out)
    image.verify()
    assert Image.open(out).size == (96, 64)


def test_generate_from_a_sigma_pipeline(tmp_path):
    """A diffusers PixArtSigmaPipeline folder (300-token captions, the SDXL VAE's scaling factor) as it is."""
    build_sigma_pipeline(tmp_path / "sigma", scheduler=diffusers.DPMSolverMultistepScheduler())
    out = tmp_path / "sigma.png"
    run = generate("--model", str(tmp_path / "sigma"), "--prompt", "a small red circle", "--steps", "2",
                   "--height", "64", "--width", "96", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (96, 64)


def test_generate_several_images_and_a_grid(model_dir, tmp_path):
    out = tmp_path / "many.png"
    run = generate("--model", model_dir, "--prompt", "a red circle", "--prompt", "a blue square", "--num-images",
                   "2", "--steps", "2", "--scheduler", "ddim", "--height", "64", "--width", "64", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert [Image.open(tmp_path / f"many-{i}.png").size for i in range(4)] == [(64, 64)] * 4
    assert Image.open(out).size == (128, 128)


@pytest.mark.parametrize("scheduler, eta", [("pcm", "0"), ("tcd", "0.3")])
def test_generate_with_the_consistency_samplers(model_dir, tmp_path, scheduler, eta):
    out = tmp_path / f"{scheduler}.png"
    run = generate("--model", model_dir, "--prompt", "a red circle", "--steps", "4", "--scheduler", scheduler,
                   "--eta", eta, "--height", "64", "--width", "64", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "4 steps" in run.stdout and Image.open(out).size == (64, 64)


def test_generate_bad_input_is_one_clear_line(model_dir, tmp_path):
    run = generate("--model", model_dir, "--prompt", "x", "--steps", "0", "--out", str(tmp_path / "x.png"))
    assert run.returncode == 2 and run.stderr.strip() == "error: num_inference_steps must be a positive integer, got 0"
    run = generate("--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "x.png"))
    assert run.returncode == 1 and "is not a PixArt pipeline directory" in run.stderr
    assert not (tmp_path / "x.png").exists()
    run = generate("--model", model_dir, "--prompt", "x", "--scheduler", "tcd", "--eta", "2", "--out",
                   str(tmp_path / "x.png"))
    assert run.returncode == 2 and run.stderr.strip() == "error: eta must be in [0, 1], got 2.0"


def test_generate_with_the_torch_backend_int8_low_memory(model_dir, tmp_path):
    out = tmp_path / "torch.png"
    run = generate("--model", model_dir, "--prompt", "a small red circle", "--steps", "3", "--height", "64",
                   "--width", "96", "--backend", "torch", "--device", "cpu", "--dtype", "bfloat16", "--int8",
                   "--low-memory", "--memory-report", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "DPMSolverMultistepScheduler" in run.stdout and "on cpu (torch)" in run.stdout
    for stage in ("encode", "denoise", "decode"):
        assert any(line.startswith(stage) and "peak RSS" in line for line in run.stdout.splitlines()), run.stdout
    assert Image.open(out).size == (96, 64)


def test_quantize_t5_then_generate_from_the_int8_folder(model_dir, tmp_path):
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(model_dir, pipe, ignore=shutil.ignore_patterns("text_encoder"))
    run = run_cli("quantize-t5", "--src", f"{model_dir}/text_encoder", "--dst", pipe / "text_encoder", "--dtype",
                  "float16")
    assert run.returncode == 0, run.stderr
    images = {}
    for backend in ("jax", "torch"):
        out = tmp_path / f"{backend}.png"
        run = generate("--model", pipe, "--prompt", "a red circle", "--steps", "2", "--height", "64", "--width",
                       "64", "--int8", "--seed", "0", "--backend", backend, "--out", out)
        assert run.returncode == 0, run.stderr
        images[backend] = np.asarray(Image.open(out), np.int16)
        assert images[backend].shape == (64, 64, 3)
    # one seed, one image: the torch backend draws the JAX backend's noise by default
    assert np.abs(images["torch"] - images["jax"]).max() <= 1
    run = generate("--model", pipe, "--prompt", "a red circle", "--backend", "torch", "--out", tmp_path / "x.png")
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "holds an int8 T5" in run.stderr and "int8=True" in run.stderr


def test_backend_options_are_checked(model_dir, tmp_path, capsys):
    from pixart_jax.cli import main  # in this process: only the error path runs

    for args, message, code in ((("--dtype", "float16"), "--dtype of the JAX backend must be one of", 2),
                                (("--low-memory",), "--low-memory is for --backend torch", 2),
                                (("--noise", "torch"), "--noise torch is for --backend torch", 2),
                                (("--backend", "torch", "--scheduler", "ddpm"), "has no diffusers scheduler class", 1)):
        out = str(tmp_path / "x.png")
        assert main(["generate", "--model", model_dir, "--prompt", "x", *args, "--out", out]) == code
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_zero_sizes_and_nan_guidance_are_one_line_errors(model_dir, tmp_path, capsys):
    """0 is not "default" and NaN guidance is not "unguided": each is refused before any compute (exit code 2: a
    value out of range)."""
    from pixart_jax.cli import main

    for args, message in ((["--height", "0"], "height must be a positive multiple of 8, got 0 "),
                          (["--width", "0"], "width must be a positive multiple of 8, got 0 "),
                          (["--guidance", "nan"], "guidance_scale must be a finite number >= 0, got nan")):
        assert main(["generate", "--model", model_dir, "--prompt", "x", "--out", str(tmp_path / "x.png"), *args]) == 2
        out, err = capsys.readouterr()
        assert err.startswith(f"error: {message}") and "\n" not in err.strip() and "denoising" not in err, err
    assert not (tmp_path / "x.png").exists()
