"""A training program: made from its config (`Pretraining(cfg)`, `LCMDistillation(cfg)`, ...), then asked for its
model, data, state and step in any order; nothing it returns depends on an earlier call. The loop asks for all of
them, a TPU plan for the state and step of an abstract model (nnx.eval_shape of `model()`), the tests for parts.

A program subclasses `Program` with its state layout (`initial_state`) and its update (`update`); one whose state
holds more networks than the model widens `networks`, one with other data or batches overrides `data`,
`batch_shapes`, `model`.
"""
import abc

from flax import nnx

from pixart_jax import sharding
from pixart_jax.choices import DType
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.training.data import feature_batch_shapes
from pixart_jax.training.optimizer import make_optimizer
from pixart_jax.training.state import place_state, split_model
from pixart_jax.training.step import TrainStep
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.transformer import load_transformer


def model_options(model_cfg):
    """PixArtTransformer's keyword options from the model config: how the model runs (remat, the residual
    stream's dtype, the attention kernel), which no checkpoint stores."""
    return dict(remat=model_cfg.remat, activation_dtype=DType(model_cfg.activation_dtype).jax,
                attention_kernel=model_cfg.attention)


def build_model(model_cfg, seed):
    """The PixArtTransformer to train: freshly initialised from `model_cfg.preset`, or loaded from
    `model_cfg.init_from` (any layout load_transformer reads) for fine-tuning."""
    dtype = DType(model_cfg.compute_dtype).jax
    if model_cfg.init_from:
        return load_transformer(model_cfg.init_from, dtype, **model_options(model_cfg))
    return PixArtTransformer(PRESETS[model_cfg.preset], dtype, **model_options(model_cfg), rngs=nnx.Rngs(seed))


class Program(abc.ABC):
    """The model, data, state and step of one training config `cfg`. `optimizer` (an optimizer.Optimizer) updates
    the trained network."""

    # Keys of the state that checkpoints leave out: the model supplies them again on resume (a frozen base).
    unsaved = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.optimizer = make_optimizer(cfg.optimizer, cfg.data.batch_size)

    def model(self):
        """The network to train, loaded (`model.init_from`) or freshly initialised."""
        return build_model(self.cfg.model, self.cfg.seed)

    def data(self, model_cfg):
        """A records directory, or generated examples (`data.source: synthetic`) sized for the model."""
        data = self.cfg.data
        if data.source != "synthetic":
            return data.source
        return synthetic_examples(data.synthetic_examples, seed=self.cfg.seed,
                                  caption_channels=model_cfg.caption_channels, max_tokens=model_cfg.max_tokens,
                                  buckets=tuple(data.synthetic_buckets))

    def batch_shapes(self, model_cfg, latent_hw):
        """{field: (per-example shape, dtype)} of a batch at latents of `latent_hw`."""
        return feature_batch_shapes(self.cfg, model_cfg, latent_hw)

    def state(self, model, mesh, *, donate=False):
        """(state, shardings): the initial train state of `model` (the weights it starts from) on `mesh`.
        `donate`: the model's arrays become the state's (the model is unusable afterwards)."""
        return place_state(self.initial_state, *self.networks(model), mesh, dict(self.cfg.mesh.rules),
                           donate=donate)

    def abstract_state(self, model, mesh):
        """(ShapeDtypeStructs with shardings, shardings) of the state `state` would build, computing nothing."""
        return place_state(self.initial_state, *self.networks(model, abstract=True), mesh,
                           dict(self.cfg.mesh.rules), abstract=True)

    def step(self, model, mesh):
        """The jitted TrainStep of `model`'s structure on `mesh` (a model or its nnx.eval_shape)."""
        _, shardings = self.abstract_state(model, mesh)
        return TrainStep(self.update(model), shardings, mesh)

    def networks(self, model, abstract=False):
        """(the arguments of `initial_state`, {variable path: logical axes} of their arrays): the model's parameters
        and buffers. `abstract`: shapes suffice (none is computed)."""
        return split_model(model)[1:], sharding.variable_axes(model)

    @abc.abstractmethod
    def initial_state(self, params, buffers):
        """The program's train state from the model's pure-dict parameters and buffers (jitted by `state`)."""

    @abc.abstractmethod
    def update(self, model):
        """The program's update `(state, batch, key) -> (state, metrics)` for `model`'s structure."""
