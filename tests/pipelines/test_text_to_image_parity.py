"""End to end: PixArtPipeline.from_pretrained on a tiny random diffusers pipeline vs diffusers itself."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import build_pipeline, initial_latents  # noqa: E402

PROMPTS = ["a small red circle at the top left", "an astronaut riding a horse"]


def run_both(tmp_path, *, micro, scheduler, height, width, steps, guidance, binning=False, prompts=PROMPTS,
             sampler=None):
    reference = build_pipeline(tmp_path / "pipe", micro=micro, scheduler=scheduler)
    bh, bw = (height, width)
    if binning:
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN
        bh, bw = reference.image_processor.classify_height_width_bin(height, width, ASPECT_RATIO_256_BIN)
    latents = initial_latents(len(prompts), bh, bw)
    expected = reference(prompts, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                         latents=torch.from_numpy(latents), output_type="np", use_resolution_binning=binning).images
    ours = PixArtPipeline.from_pretrained(str(tmp_path / "pipe"), sampler=sampler)
    got = ours(prompts, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
               latents=latents, output_type="np", use_resolution_binning=binning, progress=False).images
    assert got.shape == expected.shape == (len(prompts), height, width, 3)
    assert expected.std() > 0.01  # a real image, not a constant
    err = float(np.abs(got - expected).max())
    print(f"max |ours - diffusers| = {err:.2e} (= {err * 255:.3f}/255)")
    return err


def test_dpm_20_steps_cfg_micro_conditions(tmp_path):
    err = run_both(tmp_path, micro=True, scheduler=diffusers.DPMSolverMultistepScheduler(), height=64, width=64,
                   steps=20, guidance=4.5)
    assert err <= 1 / 255


def test_dpm_20_steps_cfg_plain_non_square_with_binning(tmp_path):
    err = run_both(tmp_path, micro=False, scheduler=diffusers.DPMSolverMultistepScheduler(), height=200,
                   width=296, steps=20, guidance=4.5, binning=True)
    assert err <= 1 / 255


def test_ddim_cfg(tmp_path):
    err = run_both(tmp_path, micro=False, scheduler=diffusers.DDIMScheduler(), height=64, width=96, steps=10,
                   guidance=4.5)
    assert err <= 1 / 255


def test_lcm_one_step_without_cfg(tmp_path):
    err = run_both(tmp_path, micro=True, scheduler=diffusers.LCMScheduler(), height=96, width=64, steps=1,
                   guidance=0.0)
    assert err <= 1 / 255


PIXART_SCHEDULE = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


@pytest.mark.parametrize("steps", [1, 4])
def test_tcd_at_gamma_0_without_cfg(tmp_path, steps):
    """diffusers passes the pipeline's eta (default 0) to TCDScheduler.step as γ; ours does the same. One step
    returns the scheduler's second output (pred_noised_sample), as diffusers' pipeline does."""
    err = run_both(tmp_path, micro=True, scheduler=diffusers.TCDScheduler(**PIXART_SCHEDULE), height=64, width=64,
                   steps=steps, guidance=0.0)
    assert err <= 1 / 255


def test_pcm_sampler_with_cfg_is_tcd_at_gamma_0_on_40_points(tmp_path):
    """A normal-CFG PCM: our phase-edge sampler (read from the TCDScheduler config as "pcm") with CFG 4.5 against
    diffusers' pipeline with that TCDScheduler, 4 steps (edges 999, 749, 499, 249 -> ᾱ_0)."""
    err = run_both(tmp_path, micro=False, scheduler=diffusers.TCDScheduler(**PIXART_SCHEDULE,
                                                                           original_inference_steps=40),
                   height=64, width=96, steps=4, guidance=4.5, sampler="pcm")
    assert err <= 1 / 255
