"""`pixart-jax generate --lora PATH[:SCALE]` on a tiny pipeline directory and a random PEFT adapter, on both
backends; bad --lora values are one line and exit code 2 before anything loads."""
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from tests.helpers.commands import run_cli  # noqa: E402
from tests.helpers.lora import pipeline_with_adapter  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Sampled at 256-px buckets (a plain, not micro-conditioned, model), as tests/test_cli_generate.py."""
    return pipeline_with_adapter(tmp_path_factory.mktemp("cli-lora"), micro=False)


def generate(directory, out, *args):
    return run_cli("generate", "--model", directory, "--prompt", "a red circle", "--steps", "2", "--height", "64",
                   "--width", "64", "--out", str(out), *args)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_generate_with_adapters(files, tmp_path, backend):
    directory, adapter, original = files
    plain = generate(directory, tmp_path / "plain.png", "--backend", backend)
    assert plain.returncode == 0, plain.stderr
    run = generate(directory, tmp_path / "lora.png", "--backend", backend, "--lora", adapter, "--lora",
                   f"{original}:0.5")
    assert run.returncode == 0, run.stderr
    assert f"+ LoRA {adapter} (1) + LoRA {original} (0.5)" in run.stdout
    with_lora, without = (np.asarray(Image.open(tmp_path / f"{n}.png"), np.int16) for n in ("lora", "plain"))
    assert with_lora.shape == (64, 64, 3) and np.abs(with_lora - without).max() > 10


def test_bad_lora_values_are_one_line(files, tmp_path, capsys):
    from pixart_jax.cli import main  # in this process: only the error path runs

    directory, adapter, _ = files
    for value, message in ((str(tmp_path / "missing"), f"{tmp_path / 'missing'} does not exist"),
                           (f"{adapter}:strong", "the scale after ':' must be a finite number, got 'strong'"),
                           (f"{adapter}:nan", "must be a finite number, got 'nan'")):
        out = str(tmp_path / "x.png")
        assert main(["generate", "--model", directory, "--prompt", "x", "--lora", value, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --lora {value}: ") and message in err and "\n" not in err.strip(), err
    assert main(["generate", "--model", directory, "--prompt", "x", "--backend", "torch", "--low-memory", "--lora",
                 adapter, "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot be combined with --low-memory" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
