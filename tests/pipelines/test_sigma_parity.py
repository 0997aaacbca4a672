"""PixArt-Σ end to end: PixArtPipeline.from_pretrained and PixArtTorchPipeline on a tiny random diffusers
PixArtSigmaPipeline vs diffusers itself, on the same latents."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.pipelines.prompts import tokenize  # noqa: E402
from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import CAPTION_TEXT, build_sigma_pipeline, initial_latents  # noqa: E402
from pixart_jax.torch import PixArtTorchPipeline  # noqa: E402

# Long enough that α's 120 tokens would cut it: Σ's 300 keep all of it.
PROMPTS = [", ".join(CAPTION_TEXT[:8]), "an astronaut riding a horse"]
# DPM-Solver with CFG at a non-square size binned to Σ-256's buckets.
CALL = dict(num_inference_steps=10, guidance_scale=4.5, height=200, width=296, output_type="np")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def sigma(tmp_path_factory):
    """(pipeline directory, initial latents, diffusers' images)."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN

    directory = tmp_path_factory.mktemp("sigma") / "pipe"
    reference = build_sigma_pipeline(directory, scheduler=diffusers.DPMSolverMultistepScheduler())
    height, width = reference.image_processor.classify_height_width_bin(CALL["height"], CALL["width"],
                                                                         ASPECT_RATIO_256_BIN)
    latents = initial_latents(len(PROMPTS), height, width)
    expected = reference(PROMPTS, latents=torch.from_numpy(latents), **CALL).images
    assert expected.shape == (len(PROMPTS), CALL["height"], CALL["width"], 3)
    assert expected.std() > 0.01  # a real image, not a constant
    return str(directory), latents, expected


def test_jax_pipeline_within_one_level_with_a_long_prompt(sigma):
    directory, latents, expected = sigma
    ours = PixArtPipeline.from_pretrained(directory)
    assert ours.transformer.cfg.max_tokens == 300 and ours.vae.scaling_factor == 0.13025
    used = int(tokenize(ours.tokenizer, PROMPTS[:1], 300)[1].sum())
    assert 120 < used < 300, used  # cut to α's 120 tokens, ours differs from diffusers by 15.5/255 here
    got = ours(PROMPTS, latents=latents, progress=False, **CALL).images
    err = float(np.abs(got - expected).max())
    print(f"max |ours - diffusers| = {err:.2e} (= {err * 255:.3f}/255)")
    assert err <= 1 / 255


def test_torch_pipeline_equals_diffusers(sigma):
    directory, latents, expected = sigma
    got = PixArtTorchPipeline.from_pretrained(directory)(PROMPTS, latents=latents, progress=False, **CALL).images
    np.testing.assert_array_equal(got, expected)
