"""PixArtTorchPipeline with a ControlNet-Transformer on a tiny random pipeline (diffusers layout, fp32, CPU):
against our JAX PixArtControlNetPipeline on the same latents and seed (≤ 1/255), the control latents of both
backends, low-memory staging, bad control input refused before anything loads, and `generate --backend torch
--controlnet`."""
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402

from pixart_jax.pipelines.control import control_latents as jax_control_latents  # noqa: E402
from pixart_jax.pipelines.control import control_request  # noqa: E402
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline  # noqa: E402
from pixart_jax.pipelines.text_to_image import shared_inputs_key  # noqa: E402
from pixart_jax.testing.random_weights import redraw_nnx  # noqa: E402
from pixart_jax.testing.reference_pipeline import build_pipeline, initial_latents  # noqa: E402
from pixart_jax.torch import PixArtTorchPipeline  # noqa: E402
from pixart_jax.torch.control import encode_control  # noqa: E402
from pixart_jax.weights.controlnet import load_controlnet, save_controlnet  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402

PROMPTS = ["a small red circle at the top left", "an astronaut riding a horse"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def with_controlnet(directory, micro):
    """(pipeline directory, ControlNet folder): a pipeline with DPM-Solver and a ControlNet of its transformer
    (1 copy) whose zero linears are drawn at random, so the control steers."""
    build_pipeline(directory / "pipe", micro=micro, scheduler=diffusers.DPMSolverMultistepScheduler())
    controlnet = load_controlnet(base=str(directory / "pipe" / "transformer"), copies=1)
    for module in (controlnet.before_proj, controlnet.after_proj):
        redraw_nnx(module, 1, scale=0.3)
    save_controlnet(controlnet, str(directory / "controlnet"))
    return str(directory / "pipe"), str(directory / "controlnet")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Micro-conditioned, as the released 1024 px ControlNet (ControlPixArtMSHalf)."""
    return with_controlnet(tmp_path_factory.mktemp("torch-controlnet"), micro=True)


@pytest.fixture(scope="module")
def torch_pipe(model):
    return PixArtTorchPipeline.from_pretrained(model[0], controlnet=model[1])


def edges_image(lo=12, hi=40, size=64):
    image = np.full((size, size, 3), 30, np.uint8)
    image[lo:hi, lo:hi] = 230
    return image


ARGS = dict(num_inference_steps=5, guidance_scale=4.5, output_type="np", use_resolution_binning=False, seed=0,
            progress=False)


def max_diff(a, b):
    err = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    print(f"max |Δ| = {err:.2e} (= {err * 255:.4f}/255)")
    return err


def test_same_control_latents_and_images_as_the_jax_pipeline(model, torch_pipe):
    images = [edges_image(), edges_image(4, 24)]  # one per prompt
    request = control_request(images, "canny")
    pixels = request.pixels(64, 64)
    ours = encode_control(torch_pipe.vae, pixels, 0).numpy()
    jax_pipe = PixArtControlNetPipeline.from_pretrained(*model)
    theirs = np.asarray(jax_control_latents(jax_pipe.vae, pixels, shared_inputs_key(jax.random.key(0))))
    print(f"control latents torch vs JAX: {rel_error(ours, theirs):.2e} relative")
    assert rel_error(ours, theirs) <= 1e-5
    latents = initial_latents(2, 64, 64)
    got = torch_pipe(PROMPTS, control_image=images, latents=latents, **ARGS).images
    expected = jax_pipe(PROMPTS, control_image=images, latents=latents, **ARGS).images
    assert got.shape == (2, 64, 64, 3) and expected.std() > 0.01
    assert max_diff(got, expected) <= 1 / 255
    plain = PixArtTorchPipeline.from_pretrained(model[0])(PROMPTS, latents=latents, height=64, width=64,
                                                          **ARGS).images
    assert max_diff(got, plain) > 0.02  # the control steers
    # given control latents (one for both prompts) act as the image they encode
    given = encode_control(torch_pipe.vae, pixels[:1], ARGS["seed"])
    given = torch_pipe(PROMPTS, control_latents=given, latents=latents, **ARGS).images
    one = torch_pipe(PROMPTS, control_image=images[0], latents=latents, **ARGS).images
    np.testing.assert_allclose(given, one, atol=1e-6)


def test_low_memory_sizes_and_images_per_prompt(model, torch_pipe):
    args = dict(ARGS, num_inference_steps=2)
    resident = torch_pipe(PROMPTS, control_image=edges_image(size=80), num_images_per_prompt=2, **args).images
    assert resident.shape == (4, 80, 80, 3)  # the control image's size
    pipe = PixArtTorchPipeline.from_pretrained(*model[:1], controlnet=model[1], low_memory=True)
    assert pipe.transformer is None and pipe.has_controlnet
    staged = pipe(PROMPTS, control_image=edges_image(size=80), num_images_per_prompt=2, memory_report=True, **args)
    np.testing.assert_array_equal(staged.images, resident)
    assert [s.stage for s in staged.memory] == ["encode", "control", "denoise", "decode"]
    wide = torch_pipe("a cat", control_image=np.zeros((48, 100, 3), np.uint8), control="none", **args).images
    assert wide.shape == (1, 48, 96, 3)  # rounded down to multiples of 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "pass either control_image or control_latents"),
    (dict(control_image="/nonexistent.png"), "control image /nonexistent.png does not exist"),
    (dict(control_image=edges_image(), control="sobel"), "control must be one of"),
    (dict(control_image=edges_image(), control="hed"), "control 'hed' is for the JAX pipeline"),
    (dict(control_image=[edges_image()] * 3), r"one control image or one per prompt \(2\), got 3"),
    (dict(control_latents=np.zeros((1, 3, 8, 8))), r"control_latents must have shape \(1 or 2 prompts, 4, h, w\)"),
    (dict(control_latents=np.zeros((1, 4, 8, 8)), height=96), r"control_latents must be \(.., 4, 12, 8\)"),
])
def test_bad_control_is_refused_before_anything_is_loaded(model, kwargs, message):
    pipe = PixArtTorchPipeline.from_pretrained(model[0], controlnet=model[1], low_memory=True)

    def fail():
        raise AssertionError("a model was loaded")

    pipe.loaders = {name: fail for name in pipe.loaders}
    with pytest.raises(ValueError, match=message):
        pipe(PROMPTS, **{**ARGS, **kwargs})


def test_a_plain_pipeline_refuses_a_control(model):
    pipe = PixArtTorchPipeline.from_pretrained(model[0], low_memory=True)
    with pytest.raises(ValueError, match="need a ControlNet-Transformer: .*controlnet=PATH"):
        pipe(PROMPTS, control_image=edges_image(), **ARGS)


def test_generate_with_the_torch_backend_and_a_controlnet(tmp_path, capsys):
    """A plain (256 px bins) pipeline: the command bins sizes, which would make a micro-conditioned one 1024 px."""
    from pixart_jax.cli import main  # in this process: a subprocess would spend its time importing

    model = with_controlnet(tmp_path, micro=False)
    image = tmp_path / "edges.png"
    Image.fromarray(edges_image(size=80)).save(image)
    args = ["generate", "--model", model[0], "--prompt", "a red circle", "--steps", "2", "--backend", "torch",
            "--controlnet", model[1], "--control-image", str(image)]
    assert main([*args, "--out", str(tmp_path / "out.png")]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out.png").size == (80, 80)
    assert main([*args, "--control", "hed", "--out", str(tmp_path / "bad.png")]) == 2
    assert "--control hed and --hed are for the JAX backend" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
