"""int8 T5 in the PyTorch path: the codes and scales of the JAX loader bitwise (quantised at load or read from the
int8 folder), embeddings equal to the JAX int8 encoder's (≤ 1e-5 relative, fp32), int8 vs fp32 images as PSNR
through both pipelines, float16 with `wo` in float32, and the bitsandbytes route."""
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402

from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import build_pipeline, initial_latents  # noqa: E402
from pixart_jax.torch import Int8Linear, PixArtTorchPipeline, load_text_encoder  # noqa: E402
from pixart_jax.weights import WeightsError  # noqa: E402
from pixart_jax.weights.nnx_state import flat_arrays  # noqa: E402
from pixart_jax.weights.t5 import load_text_encoder as load_jax_t5  # noqa: E402
from pixart_jax.weights.t5_int8 import export_int8_t5  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PROMPTS = ["a small red circle at the top left", "an astronaut riding a horse on the moon"]
# JAX layout of each T5 linear -> transformers' module path inside a block
LINEARS = {"attn.q": "layer.0.SelfAttention.q", "attn.k": "layer.0.SelfAttention.k",
           "attn.v": "layer.0.SelfAttention.v", "attn.o": "layer.0.SelfAttention.o",
           "ff.wi_0": "layer.1.DenseReluDense.wi_0", "ff.wi_1": "layer.1.DenseReluDense.wi_1",
           "ff.wo": "layer.1.DenseReluDense.wo"}


@pytest.fixture(scope="module")
def pipe_dirs(tmp_path_factory):
    """A tiny random pipeline (transformers' T5 saved by save_pretrained) and the same with an int8 text_encoder/."""
    root = tmp_path_factory.mktemp("int8-pipes")
    build_pipeline(root / "fp32", micro=True, scheduler=diffusers.DPMSolverMultistepScheduler())
    shutil.copytree(root / "fp32", root / "int8")
    shutil.rmtree(root / "int8" / "text_encoder")
    export_int8_t5(str(root / "fp32" / "text_encoder"), str(root / "int8" / "text_encoder"))
    return str(root / "fp32"), str(root / "int8")


def tokens(n=2, length=120):
    ids = np.random.default_rng(0).integers(0, 60, (n, length))
    mask = (np.arange(length) < np.array([[7], [length]])[:n]).astype(np.int64)
    return ids, mask


def embeddings_torch(model, ids, mask):
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    return out.float().numpy()


@pytest.mark.parametrize("source", ["fp32", "int8"])
def test_codes_and_scales_equal_the_jax_loaders_bitwise(pipe_dirs, source):
    fp32, int8 = pipe_dirs
    directory = f"{fp32 if source == 'fp32' else int8}/text_encoder"
    ours = load_text_encoder(directory, int8=True)
    jax_state = flat_arrays(load_jax_t5(f"{fp32}/text_encoder", int8=True))
    checked = 0
    for i, block in enumerate(ours.encoder.block):
        for jax_name, module_path in LINEARS.items():
            linear = block.get_submodule(module_path)
            assert isinstance(linear, Int8Linear) and linear.weight.dtype == torch.int8
            ours_jax = f"blocks.{i}.{jax_name}"
            np.testing.assert_array_equal(linear.weight.numpy().T, np.asarray(jax_state[f"{ours_jax}.kernel"]))
            np.testing.assert_array_equal(linear.weight_scale.numpy(), np.asarray(jax_state[f"{ours_jax}.scale"]))
            checked += 1
    assert checked == 2 * 7 and not any(isinstance(m, torch.nn.Linear) for m in ours.modules())


def test_int8_embeddings_equal_jax_int8(pipe_dirs):
    fp32, int8 = pipe_dirs
    ids, mask = tokens()
    ours = embeddings_torch(load_text_encoder(f"{int8}/text_encoder", int8=True), ids, mask)
    jax = np.asarray(load_jax_t5(f"{int8}/text_encoder", int8=True)(jnp.asarray(ids, jnp.int32),
                                                                    jnp.asarray(mask, jnp.int32)))
    err = rel_error(ours, jax)
    reference = embeddings_torch(load_text_encoder(f"{fp32}/text_encoder"), ids, mask)
    quantisation = rel_error(ours, reference)
    print(f"int8 T5 torch vs JAX (same codes): {err:.2e}; int8 vs fp32: {quantisation:.2e} (relative)")
    assert err <= 1e-5
    assert 0 < quantisation < 0.15  # measured 8.0e-2: a 32-wide random T5 rounds coarsely; not a float path


def test_float16_computes_wo_in_float32(pipe_dirs):
    _, int8 = pipe_dirs
    model = load_text_encoder(f"{int8}/text_encoder", dtype=torch.float16, int8=True)
    block = model.encoder.block[0]
    assert block.layer[1].DenseReluDense.wo.compute_dtype == torch.float32
    assert block.layer[0].SelfAttention.q.compute_dtype is None and model.shared.weight.dtype == torch.float16
    ids, mask = tokens()
    fp32_int8 = load_text_encoder(f"{int8}/text_encoder", int8=True)
    err = rel_error(embeddings_torch(model, ids, mask), embeddings_torch(fp32_int8, ids, mask))
    print(f"int8 T5 computed in float16 vs in float32 (same codes): {err:.2e}")
    assert err < 1e-2


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_int8_images_psnr_and_both_pipelines_agree(pipe_dirs):
    """int8 vs fp32 images (same latents, 20 DPM-Solver steps, CFG 4.5) through the torch pipeline, and the JAX
    pipeline's int8 option giving the torch pipeline's int8 images."""
    fp32, int8 = pipe_dirs
    latents = initial_latents(2, 64, 64)
    args = dict(num_inference_steps=20, guidance_scale=4.5, height=64, width=64, output_type="np", latents=latents,
                use_resolution_binning=False, progress=False)
    reference = PixArtTorchPipeline.from_pretrained(fp32)(PROMPTS, **args).images
    quantised = PixArtTorchPipeline.from_pretrained(fp32, int8=True)(PROMPTS, **args).images
    from_folder = PixArtTorchPipeline.from_pretrained(int8, int8=True)(PROMPTS, **args).images
    jax = PixArtPipeline.from_pretrained(int8, int8=True)(PROMPTS, **args).images
    np.testing.assert_array_equal(quantised, from_folder)
    value = psnr(quantised, reference)
    print(f"int8 vs fp32 T5, images: PSNR {value:.1f} dB; torch vs JAX int8: "
          f"{np.abs(quantised - jax).max() * 255:.4f}/255")
    assert np.abs(quantised - jax).max() <= 1 / 255
    assert value > 40 and not np.array_equal(quantised, reference)  # measured 51.3 dB (tiny random T5)


def test_int8_folder_needs_int8(pipe_dirs):
    _, int8 = pipe_dirs
    with pytest.raises(WeightsError, match="holds an int8 T5.*int8=True"):
        PixArtTorchPipeline.from_pretrained(int8)
    with pytest.raises(WeightsError, match="bitsandbytes backend quantises a float T5"):
        load_text_encoder(f"{int8}/text_encoder", int8=True, int8_backend="bitsandbytes")
    with pytest.raises(ValueError, match="int8_backend must be one of"):
        load_text_encoder(f"{int8}/text_encoder", int8=True, int8_backend="fp8")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bitsandbytes_route_on_cpu(pipe_dirs):
    """Experimental: transformers' LLM.int8 (bitsandbytes 0.50.2, CPU kernels here); `wo` stays float."""
    bnb = pytest.importorskip("bitsandbytes")
    fp32, _ = pipe_dirs
    model = load_text_encoder(f"{fp32}/text_encoder", int8=True, int8_backend="bitsandbytes")
    block = model.encoder.block[0]
    assert isinstance(block.layer[0].SelfAttention.q, bnb.nn.Linear8bitLt)
    assert not isinstance(block.layer[1].DenseReluDense.wo, bnb.nn.Linear8bitLt)
    ids, mask = tokens()
    err = rel_error(embeddings_torch(model, ids, mask),
                    embeddings_torch(load_text_encoder(f"{fp32}/text_encoder"), ids, mask))
    print(f"bitsandbytes int8 T5 vs fp32: {err:.2e}")
    assert err < 0.1
