"""The prompt-embedding LRU cache of the pipelines: a hit returns the same embeddings without running T5, every
setting the embeddings depend on is part of the key, the least recently used entry goes first, and another text
encoder empties it."""
import numpy as np
import pytest

from pixart_jax.pipelines.prompt_cache import PromptCache
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.testing.reference_pipeline import build_pipeline

diffusers = pytest.importorskip("diffusers")


class CountingEncoder:
    """A text encoder that counts its calls."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __call__(self, ids, mask):
        self.calls += 1
        return self.encoder(ids, mask)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "pipe"
    build_pipeline(path, micro=False, scheduler=diffusers.DPMSolverMultistepScheduler())
    return PixArtPipeline.from_pretrained(str(path))


@pytest.fixture
def pipe(loaded):
    """The module's pipeline with a fresh counting text encoder and no cache."""
    t5 = loaded.text_encoder
    loaded.text_encoder = CountingEncoder(t5)
    yield loaded
    loaded.text_encoder, loaded.prompt_cache = t5, PromptCache()


def test_a_hit_returns_the_same_embeddings_without_t5(pipe):
    encoder = pipe.text_encoder
    uncached = pipe._embeddings(GenerationRequest(prompt="a red circle"))
    pipe.prompt_cache = PromptCache(4)
    first = pipe._embeddings(GenerationRequest(prompt="a red circle"))
    second = pipe._embeddings(GenerationRequest(prompt="a red circle", seed=5, num_inference_steps=3))
    assert encoder.calls == 2 and (pipe.prompt_cache.hits, pipe.prompt_cache.misses) == (1, 1)
    for a, b, c in zip(first, second, uncached):
        for x, y, z in zip(a, b, c):
            assert x is y  # the cached arrays themselves
            np.testing.assert_array_equal(x, z)
    args = dict(num_inference_steps=2, height=64, width=64, use_resolution_binning=False, seed=0, output_type="np",
                progress=False)
    cached = pipe("a red circle", **args).images
    assert encoder.calls == 2
    pipe.prompt_cache = PromptCache(0)
    np.testing.assert_array_equal(pipe("a red circle", **args).images, cached)
    assert encoder.calls == 3


@pytest.mark.parametrize("change", [
    dict(prompt="a blue circle"), dict(prompt=("a red circle", "a red circle")), dict(negative_prompt="blurry"),
    dict(max_sequence_length=60), dict(clean_caption=False), dict(null_caption="y_embedding"),
    dict(guidance_scale=1.0),
])
def test_every_setting_the_embeddings_depend_on_misses(pipe, change):
    encoder = pipe.text_encoder
    pipe.prompt_cache = PromptCache(8)
    base = dict(prompt="a red circle", negative_prompt="", guidance_scale=4.5)
    pipe._embeddings(GenerationRequest(**base))
    pipe._embeddings(GenerationRequest(**{**base, **change}))
    assert encoder.calls == 2 and pipe.prompt_cache.misses == 2 and pipe.prompt_cache.hits == 0


def test_least_recently_used_goes_first_and_another_encoder_empties_it(pipe):
    encoder = pipe.text_encoder
    pipe.prompt_cache = cache = PromptCache(2)
    for prompt in ("a", "b", "a", "c", "a", "b"):  # c evicts b (a was used since), then b evicts c
        pipe._embeddings(GenerationRequest(prompt=prompt))
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 2) and encoder.calls == 4
    pipe.text_encoder = CountingEncoder(encoder.encoder)
    pipe._embeddings(GenerationRequest(prompt="a"))
    assert pipe.text_encoder.calls == 1 and len(cache) == 1
    with pytest.raises(ValueError, match="prompt cache size must be a non-negative integer, got -1"):
        PromptCache(-1)
