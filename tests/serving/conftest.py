"""A tiny random PixArt pipeline folder with aspect-ratio buckets (256 px) and a ControlNet of it, written once for
the serving tests."""
import pytest
from flax import nnx

from pixart_jax.models.controlnet import PixArtControlNet
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.testing.stand_ins import save_pipeline
from pixart_jax.weights.controlnet import save_controlnet
from tests.serving.stub import CFG


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    transformer = redraw_nnx(PixArtTransformer(CFG, rngs=nnx.Rngs(0)), 0)
    return save_pipeline(tmp_path_factory.mktemp("serving") / "tiny", transformer)


@pytest.fixture(scope="session")
def controlnet_dir(model_dir, tmp_path_factory):
    """A ControlNet of model_dir's transformer (one block) whose zero-initialised projections are drawn at random,
    so the control changes the image."""
    controlnet = PixArtControlNet(PixArtPipeline.from_pretrained(model_dir).transformer, 1)
    for module in (controlnet.before_proj, controlnet.after_proj):
        redraw_nnx(module, 1, scale=0.1)
    path = str(tmp_path_factory.mktemp("controlnet") / "controlnet")
    save_controlnet(controlnet, path)
    return path
