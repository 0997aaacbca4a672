"""The PyTorch pipeline's LoRA methods (pixart_jax/torch/lora.py, through PEFT) on a tiny random pipeline and a
random PEFT adapter: the JAX pipeline's images with the same adapter and latents (within one uint8 level), any file
our reader reads (the original module names too), set_adapters weights, fuse / unfuse and unload, adapters loaded by
from_pretrained(lora=...)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.torch import PixArtTorchPipeline  # noqa: E402
from pixart_jax.torch import lora as torch_lora  # noqa: E402
from tests.helpers.lora import ARGS, PROMPTS, pipeline_with_adapter  # noqa: E402

# PEFT merges in float32 (W + s·BA, then one matmul instead of two): the fused images differ by float32 rounding.
ROUNDING = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def uint8(images):
    return np.round(images * 255).astype(np.int16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return pipeline_with_adapter(tmp_path_factory.mktemp("torch-lora"))


@pytest.fixture(scope="module")
def shared(files):
    """One pipeline for the module, its base images and its transformer's weights."""
    pipe = PixArtTorchPipeline.from_pretrained(files[0])
    weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    return pipe, pipe(PROMPTS, **ARGS).images, weights


@pytest.fixture
def pipe(shared):
    """The shared pipeline, given back without adapters and with its base weights (a fuse / unfuse test's rounding
    stays its own)."""
    pipe, _, weights = shared
    yield pipe
    pipe.unload_lora_weights()
    pipe.transformer.load_state_dict(weights)


def test_same_images_as_the_jax_pipeline(pipe, files, shared):
    pipe.load_lora_weights(files[1])
    ours = pipe(PROMPTS, **ARGS).images
    jax_pipe = PixArtPipeline.from_pretrained(files[0])
    jax_pipe.load_lora_weights(files[1])
    expected = jax_pipe(PROMPTS, **ARGS).images
    diff = np.abs(uint8(ours) - uint8(expected)).max()
    print(f"max uint8 |torch - JAX| with the adapter: {diff} (float {np.abs(ours - expected).max():.2e})")
    assert diff <= 1
    assert np.abs(ours - shared[1]).max() > 0.05  # the adapter matters


def test_original_module_names_give_the_peft_folders_images(pipe, files):
    """The original layout's fused qkv / kv adapters, split by our reader into diffusers' q, k, v for PEFT."""
    pipe.load_lora_weights(files[1])
    expected = pipe(PROMPTS, **ARGS).images
    pipe.unload_lora_weights()
    pipe.load_lora_weights(files[2], adapter_name="original")
    assert pipe.get_active_adapters() == ["original"]
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, expected, atol=ROUNDING)


def test_set_adapters_weights_and_unload(pipe, files, shared):
    pipe.load_lora_weights(files[1], scale=0.5)
    half = pipe(PROMPTS, **ARGS).images
    pipe.load_lora_weights(files[2], adapter_name="second")
    assert pipe.get_active_adapters() == ["default_0", "second"]
    pipe.set_adapters(["default_0", "second"], [0.0, 0.0])
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, shared[1])  # weight 0 adds exact zeros
    pipe.set_adapters("default_0", 0.5)
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, half)
    with pytest.raises(ValueError, match=r"unknown adapter names \['other'\]"):
        pipe.set_adapters(["other"])
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and not hasattr(pipe.transformer, "peft_config")
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in pipe.transformer.modules())
    np.testing.assert_array_equal(pipe(PROMPTS, **ARGS).images, shared[1])


def test_fuse_and_unfuse_round_trip(pipe, files, shared):
    pipe.load_lora_weights(files[1])
    adapted = pipe(PROMPTS, **ARGS).images
    pipe.set_adapters("default_0", 0.5)
    half = pipe(PROMPTS, **ARGS).images
    pipe.set_adapters("default_0", 1.0)
    pipe.fuse_lora(lora_scale=0.5)
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, half, atol=ROUNDING)
    with pytest.raises(ValueError, match="unfuse_lora it before adding adapters"):
        pipe.load_lora_weights(files[1])
    pipe.unfuse_lora()
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, adapted, atol=ROUNDING)
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # takes the fused adapter out first
    np.testing.assert_allclose(pipe(PROMPTS, **ARGS).images, shared[1], atol=ROUNDING)


def test_low_memory_pipelines_refuse_adapters(files):
    pipe = PixArtTorchPipeline.from_pretrained(files[0], low_memory=True)
    with pytest.raises(ValueError, match="LoRA adapters need a resident transformer"):
        pipe.load_lora_weights(files[1])


def test_from_pretrained_loads_the_adapters(pipe, files):
    """lora= at load time equals load_lora_weights after it, adapter by adapter (names, weights, images)."""
    pipe.load_lora_weights(files[1], scale=0.7)
    pipe.load_lora_weights(files[2])
    expected = pipe(PROMPTS, **ARGS).images
    loaded = PixArtTorchPipeline.from_pretrained(files[0], lora=[(files[1], 0.7), files[2]])
    assert torch_lora.active_adapters(loaded.transformer) == {"default_0": 0.7, "default_1": 1.0}
    np.testing.assert_array_equal(loaded(PROMPTS, **ARGS).images, expected)
    assert PixArtTorchPipeline.from_pretrained(files[0], lora=files[1]).get_active_adapters() == ["default_0"]


@pytest.mark.parametrize("options, message", [
    (lambda adapter: dict(lora="missing/"), "lora: missing/ does not exist"),
    (lambda adapter: dict(lora=[(adapter, float("nan"))]), "lora: the scale of .* must be a finite number, got nan"),
    (lambda adapter: dict(lora=[adapter], low_memory=True), "lora= needs the transformer resident"),
])
def test_from_pretrained_refuses_bad_adapters_before_loading(files, monkeypatch, options, message):
    monkeypatch.setattr("pixart_jax.torch.pipeline.transformer_config", lambda *a: pytest.fail("read before the check"))
    with pytest.raises(ValueError, match=message):
        PixArtTorchPipeline.from_pretrained(files[0], **options(files[1]))


def test_the_readme_s_peft_snippet(files, tmp_path):
    """The README's "load in PyTorch" snippet, as written there (paths aside): an adapter save_lora wrote (what a
    LoRA run exports) through PeftModel.from_pretrained onto diffusers' transformer, merged, in diffusers'
    PixArtAlphaPipeline; its images are our PyTorch pipeline's with lora= (PEFT merges in float32: rounding apart)."""
    from pixart_jax.weights.lora import load_lora, save_lora
    from pixart_jax.weights.transformer import load_transformer

    save_lora(load_lora(load_transformer(files[0] + "/transformer"), files[1]), str(tmp_path / "lora"))
    pipeline_dir, lora_dir = files[0], str(tmp_path / "lora")
    # -- the snippet --
    transformer = diffusers.PixArtTransformer2DModel.from_pretrained(pipeline_dir, subfolder="transformer")
    transformer = peft.PeftModel.from_pretrained(transformer, lora_dir).merge_and_unload()
    pipe = diffusers.PixArtAlphaPipeline.from_pretrained(pipeline_dir, transformer=transformer)
    # --
    args = {k: v for k, v in ARGS.items() if k != "progress"}
    images = pipe(PROMPTS, **dict(args, latents=torch.from_numpy(ARGS["latents"]))).images
    expected = PixArtTorchPipeline.from_pretrained(pipeline_dir, lora=lora_dir)(PROMPTS, **ARGS).images
    print(f"README snippet vs PixArtTorchPipeline(lora=): max |Δ| {np.abs(images - expected).max():.2e}")
    np.testing.assert_allclose(images, expected, atol=ROUNDING)
