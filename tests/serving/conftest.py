"""A tiny random PixArt pipeline folder with aspect-ratio buckets (256 px), a LoRA adapter and a ControlNet for it,
written once for the serving tests."""
import os

import jax
import pytest
from flax import nnx

from pixart_jax.models.controlnet import PixArtControlNet
from pixart_jax.models.lora import LoRAParam
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.testing.stand_ins import save_pipeline
from pixart_jax.weights.controlnet import save_controlnet
from pixart_jax.weights.lora import add_lora, save_lora
from pixart_jax.weights.transformer import load_transformer
from tests.serving.stub import CFG


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    transformer = redraw_nnx(PixArtTransformer(CFG, rngs=nnx.Rngs(0)), 0)
    return save_pipeline(tmp_path_factory.mktemp("serving") / "tiny", transformer)


@pytest.fixture(scope="session")
def lora_dir(model_dir, tmp_path_factory):
    """A PEFT LoRA folder (rank 4) for the tiny model: A as drawn, B drawn as the base's weights are (nonzero: it
    changes images)."""
    transformer = add_lora(load_transformer(os.path.join(model_dir, "transformer")), rank=4)
    flat, treedef = jax.tree_util.tree_flatten_with_path(nnx.state(transformer, LoRAParam))
    keys = jax.random.split(jax.random.key(7), len(flat))
    nnx.update(transformer, jax.tree.unflatten(treedef, [
        0.05 * jax.random.normal(k, leaf.shape) if jax.tree_util.keystr(path).endswith("['b'].value") else leaf
        for k, (path, leaf) in zip(keys, flat)]))
    path = str(tmp_path_factory.mktemp("lora") / "style")
    save_lora(transformer, path)
    return path


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
