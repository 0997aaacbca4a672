"""GenerationRequest: the checks a call's arguments get once built (nothing about the model), those its `sizes` adds
for a transformer config and VAE factor (no weights), and check_seed."""
import numpy as np
import pytest

from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.pipelines.control import ControlKind, control_request
from pixart_jax.pipelines.request import GenerationRequest, NullCaption, OutputType, Sizes
from pixart_jax.seeds import MAX_SEED, check_seed

CFG = PRESETS["tiny"].replace(sample_size=32)  # 256 px bins; patch 2, 4 channels, (120, 32) captions
SCALE = 8


def test_a_request_is_a_frozen_value_with_choices_as_enums():
    request = GenerationRequest(prompt=["a", "b"], negative_prompt=["c", "d"], output_type="np",
                                null_caption="y_embedding", seed=np.int64(7), num_images_per_prompt=3)
    assert request.prompt == ("a", "b") and request.negative_prompt == ("c", "d")
    assert request.output_type is OutputType.np and request.null_caption is NullCaption.y_embedding
    assert request.seed == 7 and type(request.seed) is int
    assert (request.prompts, request.images, request.guided, request.decoded) == (2, 6, True, True)
    with pytest.raises(AttributeError):
        request.seed = 8
    assert GenerationRequest(prompt="a", guidance_scale=1.0, output_type="latent").guided is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=None), "prompt must be a string or a non-empty list of strings, got None"),
    (dict(prompt=["a", 3]), r"prompt must be a string or a non-empty list of strings, got \('a', 3\)"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer, got 0"),
    (dict(num_inference_steps=2.0), "num_inference_steps must be a positive integer, got 2.0"),
    (dict(num_inference_steps=True), "num_inference_steps must be a positive integer, got True"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number >= 0, got inf"),
    (dict(guidance_scale="4.5"), "guidance_scale must be a finite number >= 0, got 4.5"),
    (dict(eta=float("nan")), r"eta must be in \[0, 1\], got nan"),
    (dict(height=60), r"height must be a positive multiple of 8, got 60 \(height x width: 60xdefault\)"),
    (dict(height=64, width=-8), r"width must be a positive multiple of 8, got -8 \(height x width: 64x-8\)"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1, got 0"),
    (dict(max_sequence_length=0), "max_sequence_length must be None or an integer >= 1, got 0"),
    (dict(max_sequence_length=1.5), "max_sequence_length must be None or an integer >= 1, got 1.5"),
    (dict(output_type="jpg"), r"output_type must be one of \['pil', 'np', 'latent'\], got 'jpg'"),
    (dict(null_caption="zeros"), "null_caption must be one of"),
    (dict(seed=2**32), r"seed must be an integer from 0 to 2\*\*32 - 1 = 4294967295, got 4294967296"),
    (dict(seed=-1), "seed must be an integer from 0 to .*, got -1"),
    (dict(seed=1.5), "seed must be an integer from 0 to .*, got 1.5"),
])
def test_values_are_checked_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest(**{"prompt": "a cat", **kwargs})


def test_seeds_span_32_bits():
    assert [check_seed(s) for s in (0, np.uint32(MAX_SEED))] == [0, MAX_SEED]
    for seed in (MAX_SEED + 1, -1, True, "3", 99999999999999999999):
        with pytest.raises(ValueError, match=f"^--seed must be an integer .* got {seed!r}$"):
            check_seed(seed, "--seed")


def test_sizes_default_bin_and_keep_the_requested_size():
    assert GenerationRequest(prompt="a").sizes(CFG, SCALE) == Sizes(256, 256, (256, 256), (1, 4, 32, 32))
    binned = GenerationRequest(prompt=["a", "b"], height=200, width=296, num_images_per_prompt=2).sizes(CFG, SCALE)
    assert binned.out_size == (200, 296) and (binned.height, binned.width) != (200, 296)
    assert binned.latent_shape == (4, 4, binned.height // SCALE, binned.width // SCALE)
    exact = GenerationRequest(prompt="a", height=64, width=96, use_resolution_binning=False).sizes(CFG, SCALE)
    assert exact == Sizes(64, 96, (64, 96), (1, 4, 8, 12))


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=72, width=64, use_resolution_binning=False),
     r"height and width must be multiples of 16 \(VAE factor 8 x patch 2\) without resolution binning, got 72x64"),
    (dict(guidance_channels=5), r"guidance_channels must be None or in \[1, 4\], got 5"),
    (dict(latents=np.zeros((1, 4, 8, 8))), r"latents must have shape \(1, 4, 32, 32\), got \(1, 4, 8, 8\)"),
    (dict(prompt=None, prompt_embeds=np.zeros((1, 120, 32))), "prompt_embeds needs prompt_attention_mask"),
    (dict(prompt=None, prompt_embeds=np.zeros((1, 120, 16)), prompt_attention_mask=np.ones((1, 120))),
     r"prompt_embeds must have shape \(batch, 120, 32\) for this transformer, got \(1, 120, 16\)"),
    (dict(prompt=None, prompt_embeds=np.zeros((2, 120, 32)), prompt_attention_mask=np.ones((2, 120)),
          negative_prompt_embeds=np.zeros((1, 120, 32)), negative_prompt_attention_mask=np.ones((1, 120))),
     "negative_prompt_embeds has batch 1, prompt_embeds 2"),
])
def test_sizes_check_what_needs_the_model(kwargs, message):
    request = GenerationRequest(**{"prompt": "a cat", **kwargs})  # fine on its own
    with pytest.raises(ValueError, match=message):
        request.sizes(CFG, SCALE)
    with pytest.raises(ValueError, match="resolution binning needs a transformer sample_size in"):
        GenerationRequest(prompt="a").sizes(PRESETS["tiny"], SCALE)


def test_control_sizes_counts_and_shapes():
    image = np.zeros((50, 100, 3), np.uint8)
    control = control_request(image, "none")
    assert control.kind is ControlKind.none and control.images[0].shape == (50, 100, 3)
    request = GenerationRequest(prompt="a", control=control, use_resolution_binning=False)
    assert request.sizes(CFG, SCALE).out_size == (48, 96)  # the image's size, rounded down to multiples of 8
    with pytest.raises(ValueError, match=r"one control image or one per prompt \(2\), got 3"):
        GenerationRequest(prompt=["a", "b"], control=control_request([image] * 3))
    with pytest.raises(ValueError, match="pass either control_image or control_latents, not both"):
        control_request(image, latents=np.zeros((1, 4, 8, 8)))
    assert control_request(None) is None
    latents = control_request(None, latents=np.zeros((1, 4, 6, 8)))
    request = GenerationRequest(prompt=["a", "b"], control=latents, use_resolution_binning=False)
    assert request.sizes(CFG, SCALE).out_size == (48, 64)  # the latents' size times the VAE factor
    with pytest.raises(ValueError, match=r"control_latents must be \(.., 4, 8, 8\) for a 64x64 image"):
        GenerationRequest(prompt="a", control=latents, height=64, use_resolution_binning=False).sizes(CFG, SCALE)
    wrong = GenerationRequest(prompt="a", control=control_request(None, latents=np.zeros((1, 3, 8, 8))))
    with pytest.raises(ValueError, match=r"control_latents must have shape \(1 or 1 prompts, 4, h, w\)"):
        wrong.sizes(CFG, SCALE)


def test_caption_length_is_max_sequence_length_or_the_models():
    sigma = CFG.replace(max_tokens=300)
    assert GenerationRequest(prompt="a").tokens(CFG) == 120 and GenerationRequest(prompt="a").tokens(sigma) == 300
    assert GenerationRequest(prompt="a", max_sequence_length=200).tokens(sigma) == 200
    embeds = dict(prompt_embeds=np.zeros((1, 300, 32)), prompt_attention_mask=np.ones((1, 300)))
    GenerationRequest(**embeds, max_sequence_length=300).sizes(CFG, SCALE)
    GenerationRequest(**embeds).sizes(sigma, SCALE)
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(batch, 120, 32\)"):
        GenerationRequest(**embeds).sizes(CFG, SCALE)
