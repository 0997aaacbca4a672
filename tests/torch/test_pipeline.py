"""PixArtTorchPipeline on tiny random pipelines in the real diffusers layout (fp32, CPU): against diffusers'
PixArtAlphaPipeline and our JAX pipeline on the same latents (≤ 1/255), seeds as diffusers', the null-caption
modes, low-memory staging with its memory report, half precision, and bad input refused before any loading."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.pipelines.prompt_cache import PromptCache  # noqa: E402
from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import build_pipeline, initial_latents  # noqa: E402
from pixart_jax.torch import PixArtTorchPipeline, format_report  # noqa: E402
from pixart_jax.weights import WeightsError  # noqa: E402
from pixart_jax.weights.transformer import load_transformer, save_jax  # noqa: E402

PROMPTS = ["a small red circle at the top left", "an astronaut riding a horse"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """{name: (directory, diffusers pipeline)}: micro-conditioned with DPM-Solver, DDIM and LCM schedulers, and a
    plain (256 px binning) one with DPM-Solver."""
    root = tmp_path_factory.mktemp("torch-pipelines")
    built = {}
    for name, micro, scheduler in [("dpm", True, diffusers.DPMSolverMultistepScheduler()),
                                   ("ddim", True, diffusers.DDIMScheduler()),
                                   ("lcm", True, diffusers.LCMScheduler()),
                                   ("plain", False, diffusers.DPMSolverMultistepScheduler())]:
        built[name] = (str(root / name), build_pipeline(root / name, micro=micro, scheduler=scheduler))
    return built


def three_ways(directory, reference, *, height, width, steps, guidance, binning=False, prompts=PROMPTS):
    """(torch, diffusers, jax) images, output_type="np", from the same initial latents."""
    bh, bw = height, width
    if binning:
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN
        bh, bw = reference.image_processor.classify_height_width_bin(height, width, ASPECT_RATIO_256_BIN)
    latents = initial_latents(len(prompts), bh, bw)
    args = dict(num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, output_type="np",
                use_resolution_binning=binning)
    expected = reference(prompts, latents=torch.from_numpy(latents), **args).images
    ours = PixArtTorchPipeline.from_pretrained(directory)(prompts, latents=latents, progress=False, **args).images
    jax = PixArtPipeline.from_pretrained(directory)(prompts, latents=latents, progress=False, **args).images
    assert ours.shape == expected.shape == jax.shape == (len(prompts), height, width, 3)
    assert expected.std() > 0.01  # a real image, not a constant
    return ours, expected, jax


def max_diff(a, b):
    err = float(np.abs(a - b).max())
    print(f"max |Δ| = {err:.2e} (= {err * 255:.4f}/255)")
    return err


@pytest.mark.parametrize("name, size, steps, guidance, binning", [
    ("dpm", (64, 64), 20, 4.5, False),      # DPM-Solver++ with guidance and micro-conditions
    ("ddim", (64, 96), 10, 4.5, False),     # DDIM with guidance and micro-conditions, not square
    ("plain", (200, 296), 8, 4.5, True),    # a plain model, resolution binning and the resize back
    ("lcm", (96, 64), 1, 0.0, False),       # LCM, one step, no guidance
])
def test_same_images_as_diffusers_and_the_jax_pipeline(pipelines, name, size, steps, guidance, binning):
    ours, expected, jax = three_ways(*pipelines[name], height=size[0], width=size[1], steps=steps,
                                     guidance=guidance, binning=binning)
    assert max_diff(ours, expected) <= 1 / 255
    assert max_diff(ours, jax) <= 1 / 255


def test_torch_noise_draws_what_diffusers_draws_with_that_generator(pipelines):
    """LCM with 4 steps injects fresh noise between steps: with noise="torch" the same seed gives diffusers' images
    exactly."""
    directory, reference = pipelines["lcm"]
    args = dict(num_inference_steps=4, guidance_scale=0.0, height=64, width=64, output_type="np",
                use_resolution_binning=False)
    expected = reference(PROMPTS, generator=torch.Generator().manual_seed(7), **args).images
    pipe = PixArtTorchPipeline.from_pretrained(directory)
    got = pipe(PROMPTS, seed=7, noise="torch", progress=False, **args).images
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(pipe(PROMPTS, seed=8, noise="torch", progress=False, **args).images, got)


@pytest.mark.parametrize("name, sampler, steps, guidance, eta", [
    ("ddim", None, 3, 4.5, 0.7),     # DDIM's σ·z every step
    ("lcm", None, 4, 0.0, 0.0),      # LCM's re-noising between steps
    ("lcm", "tcd", 3, 0.0, 0.3),     # TCD's γ > 0
    ("ddim", "sa", 4, 4.5, 0.0),     # SA-Solver's predictor noise, reused by the next corrector
])
def test_seed_gives_the_jax_pipelines_image(pipelines, name, sampler, steps, guidance, eta):
    """By default the torch path draws the JAX pipeline's initial latents and sampler noise for a seed: one seed,
    one image on both backends, for every kind of stochastic sampler (tests/torch/test_scheduler_noise.py: the
    steps' noise is what we give them)."""
    directory, _ = pipelines[name]
    args = dict(num_inference_steps=steps, guidance_scale=guidance, height=64, width=64, output_type="np",
                use_resolution_binning=False, eta=eta, seed=3, progress=False)
    ours = PixArtTorchPipeline.from_pretrained(directory, sampler=sampler)(PROMPTS, **args).images
    jax = PixArtPipeline.from_pretrained(directory, sampler=sampler)(PROMPTS, **args).images
    assert max_diff(ours, jax) <= 1 / 255


def test_null_caption_y_embedding_from_a_pixart_jax_transformer(pipelines, tmp_path):
    """A pipeline whose transformer/ is in our layout (written by `convert --to jax`) carries its y_embedding;
    the torch path reads it and guides with it (prompt's mask), as the JAX pipeline does."""
    directory, _ = pipelines["dpm"]
    copy = tmp_path / "pipe"
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        shutil.copytree(f"{directory}/{part}", copy / part)
    (copy / "model_index.json").write_text(open(f"{directory}/model_index.json").read())
    model = load_transformer(f"{directory}/transformer")
    model.y_embedding[...] = np.random.default_rng(0).standard_normal(model.y_embedding.shape) * 0.3
    save_jax(model, str(copy / "transformer"))
    latents = initial_latents(2, 64, 64)
    args = dict(num_inference_steps=5, guidance_scale=4.5, height=64, width=64, output_type="np",
                use_resolution_binning=False, latents=latents, progress=False)
    torch_pipe = PixArtTorchPipeline.from_pretrained(str(copy))
    np.testing.assert_array_equal(torch_pipe.transformer.y_embedding.numpy(), np.asarray(model.y_embedding[...]))
    jax_pipe = PixArtPipeline.from_pretrained(str(copy))
    ours = torch_pipe(PROMPTS, null_caption="y_embedding", **args).images
    assert max_diff(ours, jax_pipe(PROMPTS, null_caption="y_embedding", **args).images) <= 1 / 255
    assert max_diff(ours, torch_pipe(PROMPTS, **args).images) > 0.01  # not T5("") in disguise
    # a diffusers transformer has none: both pipelines use the same default
    diffusers_dir = pipelines["dpm"][0]
    ours = PixArtTorchPipeline.from_pretrained(diffusers_dir)(PROMPTS, null_caption="y_embedding", **args).images
    theirs = PixArtPipeline.from_pretrained(diffusers_dir)(PROMPTS, null_caption="y_embedding", **args).images
    assert max_diff(ours, theirs) <= 1 / 255


def test_low_memory_gives_the_same_images_and_reports_each_stage(pipelines):
    directory, _ = pipelines["dpm"]
    args = dict(num_inference_steps=3, guidance_scale=4.5, height=64, width=64, output_type="np",
                use_resolution_binning=False, seed=0, progress=False)
    resident = PixArtTorchPipeline.from_pretrained(directory)(PROMPTS, **args)
    pipe = PixArtTorchPipeline.from_pretrained(directory, low_memory=True)
    assert pipe.transformer is None and pipe.text_encoder is None and pipe.vae is None
    staged = pipe(PROMPTS, memory_report=True, **args)
    np.testing.assert_array_equal(staged.images, resident.images)
    assert resident.memory is None
    assert [s.stage for s in staged.memory] == ["encode", "denoise", "decode"]
    assert all(s.peak_bytes > 2**20 and s.measure == "peak RSS" for s in staged.memory)
    print(format_report(staged.memory))
    assert pipe.transformer is None  # nothing stays loaded


def test_prompt_cache_skips_loading_t5(pipelines):
    """With a prompt cache, a repeated prompt is not encoded again (low_memory: T5 is not even loaded), and the
    images are the uncached ones."""
    directory, _ = pipelines["dpm"]
    pipe = PixArtTorchPipeline.from_pretrained(directory, low_memory=True)
    load_t5, loads = pipe.loaders["text_encoder"], []
    pipe.loaders["text_encoder"] = lambda: loads.append(1) or load_t5()
    args = dict(num_inference_steps=2, height=64, width=64, use_resolution_binning=False, seed=0, output_type="np",
                progress=False)
    uncached = pipe(PROMPTS, **args).images
    pipe.prompt_cache = PromptCache(2)
    first, second = (pipe(PROMPTS, **args).images for _ in range(2))
    assert len(loads) == 2 and (pipe.prompt_cache.hits, pipe.prompt_cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_output_types_batches_and_return_dict(pipelines):
    directory, _ = pipelines["dpm"]
    pipe = PixArtTorchPipeline.from_pretrained(directory)
    args = dict(num_inference_steps=2, height=64, width=96, use_resolution_binning=False, seed=1, progress=False)
    images = pipe(PROMPTS, num_images_per_prompt=2, **args).images
    assert len(images) == 4 and images[0].size == (96, 64)
    latents = pipe("a cat", output_type="latent", **args).images
    assert torch.is_tensor(latents) and latents.shape == (1, 4, 8, 12) and latents.dtype == torch.float32
    (array,) = pipe("a cat", output_type="np", return_dict=False, **args)
    assert array.shape == (1, 64, 96, 3)
    # given embeddings without negative ones: the null caption, as the JAX pipeline does
    embeds = np.random.default_rng(0).standard_normal((1, 120, 32)).astype(np.float32)
    mask = np.ones((1, 120), np.float32)
    jax = PixArtPipeline.from_pretrained(directory)
    latents0 = initial_latents(1, 64, 96)
    given = dict(prompt_embeds=embeds, prompt_attention_mask=mask, latents=latents0, output_type="np", **args)
    assert max_diff(pipe(**given).images, jax(**given).images) <= 1 / 255


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(pipelines, dtype):
    directory, _ = pipelines["dpm"]
    args = dict(num_inference_steps=4, guidance_scale=4.5, height=64, width=64, output_type="np",
                use_resolution_binning=False, seed=0, progress=False)
    reference = PixArtTorchPipeline.from_pretrained(directory)(PROMPTS, **args).images
    pipe = PixArtTorchPipeline.from_pretrained(directory, dtype=dtype)
    assert pipe.transformer.dtype == dtype and pipe.vae.dtype == dtype
    wo = pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == (torch.float32 if dtype == torch.float16 else dtype)  # T5 v1.1 overflows in fp16
    err = max_diff(pipe(PROMPTS, **args).images, reference)
    assert err < 0.1


def test_schedulers_follow_our_registry(pipelines):
    directory, _ = pipelines["dpm"]
    pipe = PixArtTorchPipeline.from_pretrained(directory, sampler="ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.clip_sample is True  # diffusers' DDIM default, as from_scheduler_config applies
    assert type(PixArtTorchPipeline.from_pretrained(directory, sampler="lcm").scheduler).__name__ == "LCMScheduler"
    with pytest.raises(ValueError, match="has no diffusers scheduler class"):
        PixArtTorchPipeline.from_pretrained(directory, sampler="ddpm")
    with pytest.raises(ValueError, match="sampler must be one of"):
        PixArtTorchPipeline.from_pretrained(directory, sampler="euler")


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer"),
    (dict(height=60), "height must be a positive multiple of 8"),
    (dict(output_type="jpeg"), "output_type must be one of"),
    (dict(null_caption="zeros"), "null_caption must be one of"),
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), r"latents must have shape \(2, 4, 8, 8\)"),
    (dict(prompt_embeds=np.zeros((2, 120, 31)), prompt_attention_mask=np.ones((2, 120))),
     r"prompt_embeds must have shape \(batch, 120, 32\)"),
])
def test_bad_input_is_refused_before_anything_is_loaded(pipelines, kwargs, message):
    directory, _ = pipelines["dpm"]
    pipe = PixArtTorchPipeline.from_pretrained(directory, low_memory=True)

    def fail():
        raise AssertionError("a model was loaded")

    pipe.loaders = {name: fail for name in pipe.loaders}
    args = dict(prompt=PROMPTS, height=64, width=64, use_resolution_binning=False, progress=False)
    with pytest.raises(ValueError, match=message):
        pipe(**{**args, **kwargs})


def test_bad_directories_and_dtypes(pipelines, tmp_path):
    directory, _ = pipelines["dpm"]
    with pytest.raises(WeightsError, match="is not a PixArt pipeline directory"):
        PixArtTorchPipeline.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="dtype must be one of"):
        PixArtTorchPipeline.from_pretrained(directory, dtype=torch.int8)
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    config = json.loads((broken / "transformer" / "config.json").read_text())
    (broken / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(WeightsError, match="missing key 'transformer_blocks.2"):
        PixArtTorchPipeline.from_pretrained(str(broken))
