"""A tiny random PixArt pipeline folder with aspect-ratio buckets (256 px), written once for the serving tests."""
import pytest
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.testing.stand_ins import save_pipeline
from tests.serving.stub import CFG


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    transformer = redraw_nnx(PixArtTransformer(CFG, rngs=nnx.Rngs(0)), 0)
    return save_pipeline(tmp_path_factory.mktemp("serving") / "tiny", transformer)
