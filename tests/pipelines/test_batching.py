"""PixArtPipeline.generate_batch: independent requests in one forward keep the images each gets alone (their own
prompts, negative prompts, image counts and seeds, the sampler's per-step noise included)."""
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.t5 import T5Config, T5Encoder
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.prompts import load_tokenizer
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers import make_sampler

pytest.importorskip("sentencepiece")
from pixart_jax.testing.random_weights import redraw_nnx  # noqa: E402
from pixart_jax.testing.reference_pipeline import TINY_T5, write_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(tokenizer_dir)
    t5 = {k: v for k, v in TINY_T5.items() if k in T5Config.__dataclass_fields__}
    return PixArtPipeline(
        transformer=redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), 0),
        text_encoder=T5Encoder(T5Config(**t5), rngs=nnx.Rngs(1)), tokenizer=load_tokenizer(str(tokenizer_dir)),
        vae=AutoencoderKL(VAEConfig(block_out_channels=(16, 16, 16, 16), norm_num_groups=8), rngs=nnx.Rngs(2)),
        sampler=make_sampler("ddim"))


def requests(**settings):
    common = dict(num_inference_steps=3, height=64, width=64, output_type="np", use_resolution_binning=False,
                  **settings)
    return [GenerationRequest(prompt="a small red circle", seed=0, **common),
            GenerationRequest(prompt=["a big blue square", "a cat"], negative_prompt="a moon", seed=7, **common),
            GenerationRequest(prompt="a small red circle", num_images_per_prompt=2, seed=1, **common)]


def test_a_batch_gives_each_request_its_images_alone(pipe):
    """DDIM with η > 0 draws noise at every step: each request's from its own key."""
    batch = requests(eta=1.0)
    steps = []
    together = pipe.generate_batch(batch, on_step=lambda: steps.append(1))
    assert len(steps) == 3
    for request, images in zip(batch, together):
        alone = pipe.generate(request, progress=False).images
        assert images.shape == alone.shape == (request.images, 64, 64, 3)
        assert np.abs(images - alone).max() <= 1 / 255
    assert not np.allclose(together[0], together[2][:1], atol=1e-2)  # one prompt, another seed: another image


def test_requests_that_cannot_share_a_forward_are_refused(pipe):
    first, _, _ = requests()
    other = GenerationRequest(prompt="a cat", num_inference_steps=4, height=64, width=64,
                              use_resolution_binning=False)
    with pytest.raises(ValueError, match="cannot share one forward"):
        pipe.generate_batch([first, other])
    with pytest.raises(ValueError, match="at least one"):
        pipe.generate_batch([])
