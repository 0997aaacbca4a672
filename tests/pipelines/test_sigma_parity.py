"""PixArt-Σ end to end: PixArtPipeline.from_pretrained on a tiny random diffusers PixArtSigmaPipeline vs diffusers."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.pipelines.prompts import tokenize  # noqa: E402
from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import CAPTION_TEXT, build_sigma_pipeline, initial_latents  # noqa: E402

# Long enough that α's 120 tokens would cut it: Σ's 300 keep all of it.
PROMPTS = [", ".join(CAPTION_TEXT[:8]), "an astronaut riding a horse"]


def test_sigma_pipeline_dpm_cfg_long_prompt_binned_non_square(tmp_path):
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN

    reference = build_sigma_pipeline(tmp_path / "pipe", scheduler=diffusers.DPMSolverMultistepScheduler())
    ours = PixArtPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert ours.transformer.cfg.max_tokens == 300 and ours.vae.scaling_factor == 0.13025
    used = int(tokenize(ours.tokenizer, PROMPTS[:1], 300)[1].sum())
    assert 120 < used < 300, used  # cut to α's 120 tokens, ours differs from diffusers by 15.5/255 here
    height, width = 200, 296
    bh, bw = reference.image_processor.classify_height_width_bin(height, width, ASPECT_RATIO_256_BIN)
    latents = initial_latents(len(PROMPTS), bh, bw)
    call = dict(num_inference_steps=10, guidance_scale=4.5, height=height, width=width, output_type="np")
    expected = reference(PROMPTS, latents=torch.from_numpy(latents), **call).images
    got = ours(PROMPTS, latents=latents, progress=False, **call).images
    assert got.shape == expected.shape == (len(PROMPTS), height, width, 3)
    assert expected.std() > 0.01  # a real image, not a constant
    err = float(np.abs(got - expected).max())
    print(f"max |ours - diffusers| = {err:.2e} (= {err * 255:.3f}/255)")
    assert err <= 1 / 255
