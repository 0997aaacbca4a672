"""diffusers' LoRA methods on the JAX pipelines (pixart_jax/pipelines/lora.py), on a tiny random pipeline and a
random PEFT adapter: load_lora_weights is load_lora on the transformer, weight 0 and unload give the base images,
fuse_lora(lora_scale) / unfuse_lora round trip, and a ControlNet pipeline puts adapters on its base."""
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from pixart_jax.models import lora  # noqa: E402
from pixart_jax.models.controlnet import PixArtControlNet  # noqa: E402
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline  # noqa: E402
from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.weights.lora import load_lora  # noqa: E402
from tests.helpers.lora import ARGS, PROMPTS, pipeline_with_adapter  # noqa: E402

# Merging changes the rounding (kernel + Σ w·s·AB in float32, then one matmul, instead of two matmuls added): the
# fused images differ from the unfused ones by float32 rounding, far below one uint8 level.
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory, adapter, _ = pipeline_with_adapter(tmp_path_factory.mktemp("pipeline-lora"))
    return directory, adapter


@pytest.fixture(scope="module")
def shared(files):
    """One pipeline for the module (compiled once per adapter graph) and a clean copy of its transformer."""
    pipe = PixArtPipeline.from_pretrained(files[0])
    return pipe, nnx.clone(pipe.transformer)


@pytest.fixture
def pipe(shared):
    """The shared pipeline with its base transformer, given back so (a test's fuse / unfuse rounding stays its own)."""
    pipe, base = shared
    pipe.transformer = nnx.clone(base)
    yield pipe
    pipe.unload_lora_weights()


@pytest.fixture(scope="module")
def base_images(shared):
    return shared[0](PROMPTS, **ARGS).images


def test_load_lora_weights_is_load_lora_on_the_transformer(pipe, files, base_images):
    pipe.load_lora_weights(files[1])
    assert pipe.get_active_adapters() == ["default_0"]
    adapted = pipe(PROMPTS, **ARGS).images
    assert np.abs(adapted - base_images).max() > 0.05  # the adapter matters
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and lora.adapter_names(pipe.transformer) == []
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, base_images)  # unloaded: the base again
    load_lora(pipe.transformer, files[1])
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, adapted)


def test_set_adapters_weights(pipe, files, base_images):
    pipe.load_lora_weights(files[1], adapter_name="style", scale=0.5)
    half = pipe(PROMPTS, **ARGS).images
    pipe.set_adapters(["style"], [0.0])
    assert lora.active_adapters(pipe.transformer) == {"style": 0.0}
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, base_images)  # weight 0 adds exact zeros
    pipe.set_adapters("style", 0.5)
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, half)
    with pytest.raises(ValueError, match=r"unknown adapter names \['other'\]"):
        pipe.set_adapters(["other"])


def test_fuse_and_unfuse_round_trip(pipe, files):
    pipe.load_lora_weights(files[1])
    adapted = pipe(PROMPTS, **ARGS).images
    pipe.set_adapters("default_0", 0.5)
    half = pipe(PROMPTS, **ARGS).images
    pipe.set_adapters("default_0", 1.0)
    pipe.fuse_lora(lora_scale=0.5)
    assert all(m.lora.fused for _, m in lora.adapted_modules(pipe.transformer))
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, half, atol=ROUNDING)
    with pytest.raises(ValueError, match="unfuse_lora it before set_adapters"):
        pipe.set_adapters("default_0", 1.0)
    pipe.unfuse_lora()
    assert lora.active_adapters(pipe.transformer) == {"default_0": 1.0}  # the weights of before fuse_lora
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, adapted, atol=ROUNDING)


def test_controlnet_pipeline_adapts_its_base(files):
    """The ControlNet's base holds the adapter (as it was trained on the base); its copies stay as they are."""
    shared = PixArtPipeline.from_pretrained(files[0])
    controlnet = PixArtControlNet(shared.transformer, copies=1)
    pipe = PixArtControlNetPipeline(controlnet, shared.text_encoder, shared.tokenizer, shared.vae, shared.sampler)
    pipe.load_lora_weights(files[1], scale=0.7)
    assert lora.active_adapters(controlnet.base) == {"default_0": 0.7} and pipe.get_active_adapters() == ["default_0"]
    assert all(path[0] == "base" for path, _ in lora.adapted_modules(controlnet))
    pipe.unload_lora_weights()
    assert lora.adapted_modules(controlnet) == []
