"""PixArtControlNetPipeline on tiny random components (no torch): the control shared by both guidance halves, a
new ControlNet sampling exactly as its base, compile-once, bad input before any compute; and
`pixart-jax generate --controlnet` on a pipeline directory written in the diffusers layout."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pixart_jax.models.controlnet import PixArtControlNet
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
from pixart_jax.pipelines.guidance import Caption, guide, guided_forward
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers import DDIM
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.testing.stand_ins import save_pipeline
from pixart_jax.weights.controlnet import save_controlnet
from pixart_jax.weights.transformer import save_original
from tests.helpers.commands import run_cli

pytest.importorskip("sentencepiece")


class CountingPipeline(PixArtControlNetPipeline):
    traces = 0

    def _generate_fn(self, *args, **kwargs):
        CountingPipeline.traces += 1
        return super()._generate_fn(*args, **kwargs)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """A pipeline directory (diffusers layout, written without torch) and a trained-looking ControlNet of its
    transformer (every branch weight drawn at random) saved as an original .pth."""
    root = tmp_path_factory.mktemp("pipe")
    base = redraw_nnx(PixArtTransformer(PRESETS["tiny"].replace(sample_size=32), rngs=nnx.Rngs(0)), 0)  # 256 px bins
    save_pipeline(root / "tiny", base, DDIM())
    controlnet = PixArtControlNet(base, 1)
    for module in (controlnet.before_proj, controlnet.after_proj):
        redraw_nnx(module, 1, scale=0.1)
    save_controlnet(controlnet, str(root / "controlnet"))  # controlnet.pth + the constructor's config.json
    save_original(base, str(root / "PixArt-XL-2-1024-MS.pth"))
    return root


@pytest.fixture(scope="module")
def pipe(components):
    plain = PixArtPipeline.from_pretrained(str(components / "tiny"))
    loaded = PixArtControlNetPipeline.from_pretrained(str(components / "tiny"), str(components / "controlnet"))
    return CountingPipeline(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}), plain


def edges_image(lo=12, hi=40, size=64):
    image = np.full((size, size, 3), 30, np.uint8)
    image[lo:hi, lo:hi] = 230
    return image


def call(pipe, **kwargs):
    args = dict(prompt="a small red circle", num_inference_steps=2, output_type="np", use_resolution_binning=False,
                progress=False, seed=0)
    return pipe(**{**args, **kwargs}).images


def test_control_goes_into_both_guidance_halves(pipe):
    """The pipeline's latents equal a DDIM loop whose guided model gets the same control latents in its
    unconditional and conditional halves."""
    controlnet, _ = pipe
    rng = np.random.default_rng(0)
    control = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    x_T = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    embeds, neg = rng.standard_normal((2, 1, 120, 32)).astype(np.float32)
    mask = np.ones((1, 120), np.float32)
    ours = call(controlnet, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                negative_prompt_attention_mask=mask, control_latents=control, latents=x_T, output_type="latent",
                guidance_scale=4.5)
    model = controlnet.transformer
    micro = dict(resolution=jnp.array([[64.0, 64.0]]), aspect_ratio=jnp.ones((1, 1)))

    def model_fn(x, t):
        halves = guided_forward(model, x, t, Caption(embeds, mask), Caption(neg, mask), control=control, **micro)
        return guide(*halves, 4.5)[:, :4]

    expected = jax.jit(lambda x: controlnet.sampler.sample(model_fn, x, 2))(x_T)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_control_steers_and_a_new_controlnet_samples_as_its_base(pipe):
    controlnet, plain = pipe
    before = CountingPipeline.traces
    a, b = call(controlnet, control_image=edges_image()), call(controlnet, control_image=edges_image(4, 20))
    assert CountingPipeline.traces == before + 1  # a new control image does not recompile
    assert a.shape == (1, 64, 64, 3) and np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(call(controlnet, control_image=edges_image()), a)
    fresh = dataclasses.replace(controlnet, transformer=PixArtControlNet(plain.transformer, 1))
    np.testing.assert_allclose(call(fresh, control_image=edges_image()), call(plain, height=64, width=64), atol=1e-6)
    wide = call(controlnet, control_image=np.zeros((48, 100, 3), np.uint8), control="none")
    assert wide.shape == (1, 48, 96, 3)  # the control image's size, rounded down to multiples of 8


@pytest.mark.parametrize("kwargs,message", [
    (dict(), "pass either control_image or control_latents"),
    (dict(control_image="/nonexistent.png"), "control image /nonexistent.png does not exist"),
    (dict(control_image=edges_image(), control="sobel"), "control must be one of"),
    (dict(control_image=edges_image(), control="hed"), "control 'hed' needs the HED network"),
    (dict(control_image=[edges_image()] * 2), r"one control image or one per prompt \(1\), got 2"),
    (dict(control_latents=np.zeros((1, 3, 8, 8))), r"control_latents must have shape \(1 or 1 prompts, 4, h, w\)"),
    (dict(control_image=edges_image(), num_inference_steps=0), "num_inference_steps must be a positive integer"),
])
def test_bad_input_fails_before_any_compute(pipe, kwargs, message):
    controlnet, _ = pipe
    before = CountingPipeline.traces
    with pytest.raises(ValueError, match=message):
        call(controlnet, **kwargs)
    assert CountingPipeline.traces == before


def test_a_plain_transformer_is_refused(pipe):
    controlnet, plain = pipe
    with pytest.raises(ValueError, match="the transformer is a PixArtTransformer, not a PixArtControlNet"):
        call(dataclasses.replace(controlnet, transformer=plain.transformer), control_image=edges_image())


def test_generate_with_a_controlnet(components, tmp_path):
    image = tmp_path / "edges.png"
    Image.fromarray(edges_image(size=80)).save(image)
    out = tmp_path / "out.png"
    args = ["generate", "--model", components / "tiny", "--prompt", "a red circle", "--steps", "2",
            "--controlnet", components / "controlnet", "--control-image", image]
    run = run_cli(*args, "--out", out)
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (80, 80)
    bad = {"--control-image": (tmp_path / "missing.png", "control image .*missing.png does not exist"),
           "--controlnet": (components / "PixArt-XL-2-1024-MS.pth", "plain PixArt transformer checkpoint, not a "
                                                                     "ControlNet")}
    for flag, (value, message) in bad.items():
        swapped = [value if a == args[args.index(flag) + 1] else a for a in args]
        run = run_cli(*swapped, "--out", tmp_path / "bad.png")
        assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert re.search(message, run.stderr), run.stderr
    run = run_cli(*args, "--control", "hed", "--out", tmp_path / "bad.png")
    assert run.returncode == 2 and "--control hed needs --hed" in run.stderr
    assert not (tmp_path / "bad.png").exists()
