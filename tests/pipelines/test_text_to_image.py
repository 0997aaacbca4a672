"""PixArtPipeline built from components: compile-once, batching, seeds and bad input (no torch needed)."""
import dataclasses

import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.t5 import T5Config, T5Encoder
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.guidance import guide
from pixart_jax.pipelines.memory import OutOfMemoryError
from pixart_jax.pipelines.prompts import load_tokenizer
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers import DPMSolverMultistep, LearnedVarianceDDPM
from pixart_jax.weights import WeightsError

pytest.importorskip("sentencepiece")
from pixart_jax.testing.random_weights import redraw_nnx  # noqa: E402
from pixart_jax.testing.reference_pipeline import TINY_T5, write_tokenizer  # noqa: E402


class CountingPipeline(PixArtPipeline):
    traces = 0

    def _generate_fn(self, *args, **kwargs):
        CountingPipeline.traces += 1
        return super()._generate_fn(*args, **kwargs)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(tokenizer_dir)
    t5 = {k: v for k, v in TINY_T5.items() if k in T5Config.__dataclass_fields__}
    return CountingPipeline(
        transformer=redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), 0),
        text_encoder=T5Encoder(T5Config(**t5), rngs=nnx.Rngs(1)),
        tokenizer=load_tokenizer(str(tokenizer_dir)),
        vae=AutoencoderKL(VAEConfig(block_out_channels=(16, 16, 16, 16), norm_num_groups=8), rngs=nnx.Rngs(2)),
        sampler=DPMSolverMultistep())


def call(pipe, **kwargs):
    args = dict(prompt="a small red circle", num_inference_steps=3, height=64, width=64, output_type="np",
                use_resolution_binning=False, progress=False, seed=0)
    return pipe(**{**args, **kwargs}).images


def test_second_call_with_same_shapes_does_not_recompile(pipe):
    before = CountingPipeline.traces
    first = call(pipe, guidance_scale=4.5)
    second = call(pipe, guidance_scale=7.0, prompt="a big blue square", seed=1)
    assert CountingPipeline.traces == before + 1
    assert first.shape == second.shape == (1, 64, 64, 3) and not np.array_equal(first, second)
    call(pipe, guidance_scale=4.5, height=96)
    assert CountingPipeline.traces == before + 2


def test_a_request_run_directly_gives_the_call_s_images(pipe):
    request = GenerationRequest(prompt="a small red circle", num_inference_steps=3, height=64, width=64,
                                output_type="np", use_resolution_binning=False, seed=0)
    np.testing.assert_array_equal(pipe.generate(request, progress=False).images, call(pipe))


def test_batches_seeds_and_output_types(pipe):
    images = call(pipe, prompt=["a red circle", "a blue square"], num_images_per_prompt=2)
    assert images.shape == (4, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    np.testing.assert_array_equal(call(pipe), call(pipe))
    assert not np.array_equal(images[0], images[1])  # two images of one prompt get different noise
    pil = call(pipe, output_type="pil", width=96)
    assert len(pil) == 1 and pil[0].size == (96, 64)
    assert call(pipe, output_type="latent").shape == (1, 4, 8, 8)


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=[]), "prompt must be a string or a non-empty list"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer, got 0"),
    (dict(height=60), "height must be a positive multiple of 8, got 60 "),
    (dict(height=0), "height must be a positive multiple of 8, got 0 "),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0, got nan"),
    (dict(height=72), "multiples of 16 .* got 72x64"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0, got -1.0"),
    (dict(output_type="jpg"), "output_type must be one of"),
    (dict(eta=1.5), r"eta must be in \[0, 1\], got 1.5"),
])
def test_bad_input_fails_before_any_compute(pipe, kwargs, message):
    before = CountingPipeline.traces
    with pytest.raises(ValueError, match=message):
        call(pipe, **kwargs)
    assert CountingPipeline.traces == before


def test_prompt_embeds_need_a_mask_of_the_right_shape(pipe):
    embeds = np.zeros((1, 120, 32), np.float32)
    with pytest.raises(ValueError, match="prompt_embeds needs prompt_attention_mask"):
        call(pipe, prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"prompt_attention_mask must have shape \(1, 120\), got \(1, 7\)"):
        call(pipe, prompt_embeds=embeds, prompt_attention_mask=np.ones((1, 7)))
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(batch, 120, 32\) .* got \(1, 120, 16\)"):
        call(pipe, prompt_embeds=np.zeros((1, 120, 16)), prompt_attention_mask=np.ones((1, 120)))


def test_swapped_components_are_used_and_return_dict_works(pipe):
    """`pipe.transformer = other` (as diffusers users do) gives other's images, without a stale copy."""
    original = pipe.transformer
    other = redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(5)), 5)
    before = call(pipe)
    pipe.transformer = other
    try:
        swapped = call(pipe)
        fresh = dataclasses.replace(pipe, transformer=other)
        np.testing.assert_array_equal(swapped, call(fresh))
    finally:
        pipe.transformer = original
    assert not np.allclose(before, swapped, atol=1e-3)
    np.testing.assert_array_equal(call(pipe), before)
    (images,) = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np", seed=0,
                     use_resolution_binning=False, progress=False, return_dict=False)
    assert images.shape == (1, 64, 64, 3)


def test_from_pretrained_rejects_other_directories(tmp_path):
    with pytest.raises(WeightsError, match="is not a PixArt pipeline directory: it has no model_index.json"):
        PixArtPipeline.from_pretrained(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(WeightsError, match="'StableDiffusionPipeline', not one of"):
        PixArtPipeline.from_pretrained(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
    (tmp_path / "tokenizer").mkdir()  # empty: checked before any component is loaded
    with pytest.raises(WeightsError, match=f"tokenizer folder {tmp_path / 'tokenizer'} has no spiece.model"):
        PixArtPipeline.from_pretrained(str(tmp_path))


def test_sizes_too_large_for_memory_are_refused_before_running(pipe):
    before = CountingPipeline.traces
    with pytest.raises(OutOfMemoryError, match=r"^generating 2 image\(s\) of 4096x4096 needs an estimated"):
        call(pipe, height=4096, width=4096, num_images_per_prompt=2)
    with pytest.raises(OutOfMemoryError, match=r"^the position embedding of 524288x524288 \(1,073,741,824 "
                                               r"tokens\) needs"):
        call(pipe, height=2**19, width=2**19)
    assert CountingPipeline.traces == before + 1  # the first compiled, but never ran; the second was not traced


def test_null_caption_modes(pipe):
    """The unconditional branch: T5 of the negative prompt (diffusers) or the checkpoint's y_embedding (repo)."""
    t5_null = call(pipe, guidance_scale=4.5)
    y_null = call(pipe, guidance_scale=4.5, null_caption="y_embedding")
    assert not np.array_equal(t5_null, y_null)
    # without guidance the null caption is unused (T5 runs on a different batch size: rounding differs)
    np.testing.assert_allclose(call(pipe, guidance_scale=1.0), call(pipe, guidance_scale=1.0,
                                                                    null_caption="y_embedding"), atol=1e-5)


def test_guide_takes_the_variance_from_the_conditional_half():
    """`guide` with channels=3 is the repo's IDDPM wrapper (DiT's forward_with_cfg on a [cond, uncond] batch, whose
    first half the sampler keeps): ε channels 0-2 guided, channel 3 and the variance from the conditional half."""
    rng = np.random.default_rng(0)
    cond, uncond = rng.normal(size=(2, 2, 8, 4, 4)).astype(np.float32)
    s = 4.5
    batch = np.concatenate([cond, uncond])  # DiT's order
    eps, rest = batch[:, :3], batch[:, 3:]
    half = eps[2:] + s * (eps[:2] - eps[2:])
    repo = np.concatenate([np.concatenate([half, half]), rest], axis=1)[:2]
    np.testing.assert_allclose(guide(uncond, cond, s, 3), repo, rtol=1e-6)
    ours = np.asarray(guide(uncond, cond, s, 4))
    np.testing.assert_allclose(ours[:, :4], uncond[:, :4] + s * (cond[:, :4] - uncond[:, :4]), rtol=1e-6)
    np.testing.assert_array_equal(ours[:, 4:], cond[:, 4:])


def test_learned_variance_sampler_with_both_guidance_modes(pipe):
    ddpm = dataclasses.replace(pipe, sampler=LearnedVarianceDDPM())
    ours, repo = (call(ddpm, guidance_scale=4.5, guidance_channels=c) for c in (None, 3))
    assert np.isfinite(ours).all() and np.isfinite(repo).all() and not np.allclose(ours, repo, atol=1e-3)


@pytest.mark.parametrize("sampler, guidance", [("dpm", 4.5), ("lcm", 0.0)])
def test_eight_devices_give_the_images_of_one(pipe, sampler, guidance):
    """8 images over the 8 fake devices (weights replicated, or sharded over pairs) = the same 8 on one device;
    LCM injects fresh noise between steps, which must not depend on the split either."""
    import jax

    from pixart_jax.samplers import LCM

    other = dict(dpm=pipe.sampler, lcm=LCM())[sampler]
    images = {}
    for name, devices, fsdp in (("one", jax.devices()[:1], 1), ("eight", None, 1), ("fsdp", None, 2)):
        split = dataclasses.replace(pipe, sampler=other, devices=devices, fsdp=fsdp)
        images[name] = call(split, num_images_per_prompt=8, guidance_scale=guidance, output_type="latent")
        assert len(images[name].sharding.device_set) == (1 if devices else 8)
    for name in ("eight", "fsdp"):
        ref = np.asarray(images["one"])
        err = np.abs(np.asarray(images[name]) - ref).max() / np.abs(ref).max()
        print(f"{sampler}: {name} vs one device, max |Δ| / max |ref| of the latents {err:.1e}")
        assert err < 1e-5  # float reassociation only: each device multiplies fewer rows
