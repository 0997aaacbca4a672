"""Train state and the one jitted train step (PixArt-alpha `train_scripts/train.py`: AdamW, clipping, EMA).

The state is a dict of global jax.Arrays: `step` (micro-steps done), `params` (fp32 master weights, pure dicts),
`buffers` (the never-trained y_embedding), `opt` (optax AdamW state), `ema`, `rng` (the run's base key). The step
runs plain `jax.jit` over the `nnx.split` state with explicit shardings and the state donated; its randomness is
`fold_in(rng, step)`, so a resumed run draws exactly what an uninterrupted one would.
"""
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pixart_jax import sharding
from pixart_jax.choices import DType
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.samplers.prediction import check_prediction_type
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.weights.transformer import load_transformer


def build_model(model_cfg, seed):
    """The PixArtTransformer to train: freshly initialised from `model_cfg.preset`, or loaded from
    `model_cfg.init_from` (any layout load_transformer reads) for fine-tuning."""
    dtype, activations = DType(model_cfg.compute_dtype).jax, DType(model_cfg.activation_dtype).jax
    if model_cfg.init_from:
        model = load_transformer(model_cfg.init_from, dtype=dtype)
        model.remat, model.activation_dtype, model.attention_kernel = model_cfg.remat, activations, model_cfg.attention
        return model
    return PixArtTransformer(PRESETS[model_cfg.preset], dtype, remat=model_cfg.remat, activation_dtype=activations,
                             attention_kernel=model_cfg.attention, rngs=nnx.Rngs(seed))


def peak_learning_rate(opt_cfg, global_batch):
    """The configured lr, times √(global batch · accumulation / 256) when sqrt scaling is on (spec §3.3)."""
    if not opt_cfg.sqrt_lr_scaling:
        return opt_cfg.lr
    return opt_cfg.lr * math.sqrt(global_batch * opt_cfg.grad_accum_steps / 256)


def make_optimizer(opt_cfg, global_batch):
    """(optax transformation, lr schedule): global-norm clip then AdamW with lr · min(1, k / warmup) at optimizer
    step k, wrapped in optax.MultiSteps when gradients are accumulated over several micro-batches.

    Warmup counts optimizer steps. (Under accelerate the reference ticks its scheduler once per process per step,
    finishing warmup after warmup / world_size steps, spec §3.9 quirk 14: set warmup_steps accordingly to match.)
    Weight decay applies to every parameter, biases and tables included, as torch's AdamW over all parameters."""
    peak = peak_learning_rate(opt_cfg, global_batch)
    warmup = opt_cfg.warmup_steps

    def schedule(count):
        if warmup == 0:
            return jnp.full((), peak, jnp.float32)
        return peak * jnp.minimum(1.0, jnp.asarray(count, jnp.float32) / warmup)

    tx = optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay))
    if opt_cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=opt_cfg.grad_accum_steps)
    return tx, schedule


def split_model(model):
    """(graphdef, params, buffers): the static structure and pure-dict trees of nnx.Params and other variables."""
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)


def _initial_state(tx, seed):
    def init(params, buffers):
        return {"step": jnp.zeros((), jnp.int32), "params": params, "buffers": buffers, "opt": tx.init(params),
                "ema": jax.tree.map(jnp.copy, params), "rng": jax.random.PRNGKey(seed)}
    return init


def init_state(model, tx, seed, mesh, rules, initial=_initial_state, axes=None, donate=False):
    """(state, shardings): the initial train state placed on `mesh` by the logical-axis `rules`; EMA starts equal
    to the (possibly loaded) weights. `initial(tx, seed)` gives the `(params, buffers) -> state` function (another
    state layout, e.g. LCD's, reuses the placement); `axes` ({path: logical axes}) defaults to the model's (a
    state with other networks, e.g. PCM's discriminator heads, adds theirs). `donate`: the model's arrays become
    the state's (the model is unusable afterwards), so a large model is not held twice."""
    _, params, buffers = split_model(model)
    init = initial(tx, seed)
    shardings = sharding.tree_shardings(jax.eval_shape(init, params, buffers), mesh, rules,
                                        sharding.variable_axes(model) if axes is None else axes)
    return jax.jit(init, out_shardings=shardings, donate_argnums=(0, 1) if donate else ())(params, buffers), shardings


def abstract_state(model, tx, seed, mesh, rules, initial=_initial_state, axes=None):
    """(ShapeDtypeStructs with shardings, shardings) of the state `init_state` would build on `mesh`, without
    computing it: the target a checkpoint is restored onto (whatever mesh it was saved from)."""
    _, params, buffers = split_model(model)
    shapes = jax.eval_shape(initial(tx, seed), params, buffers)
    shardings = sharding.tree_shardings(shapes, mesh, rules, sharding.variable_axes(model) if axes is None else axes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return target, shardings


def optimizer_update(tx, schedule, accum_steps, loss_fn, params, opt, average, rate, step, has_aux=False):
    """One update of `params` by the gradient of `loss_fn`, then the moving average `average` (EMA / LCD target;
    None: none kept) pulled towards the new params by (1 - rate) on micro-steps that complete an accumulated
    update. With `has_aux` loss_fn returns (loss, {name: scalar}) and the scalars join the metrics.
    Returns (params, opt, average, metrics)."""
    if has_aux:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    else:
        (loss, grads), aux = jax.value_and_grad(loss_fn)(params), {}
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
    applied = (step + 1) % accum_steps == 0
    if average is not None:
        average = jax.tree.map(lambda a, p: jnp.where(applied, rate * a + (1 - rate) * p, a), average, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step // accum_steps), **aux}
    return params, opt, average, metrics


class TrainStep:
    """The jitted step `(state, batch) -> (state, metrics)`; the state is donated. `traces` counts how often it
    was traced: once per batch shape (aspect-ratio bucket), never per step."""

    def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule, state_shardings: dict,
                 mesh: jax.sharding.Mesh, *, accum_steps: int = 1, ema_rate: float = 0.9999,
                 caption_dropout: float = 0.1, latent_scale: float = LATENT_SCALE,
                 prediction_type: str = "epsilon", tables=None):
        check_prediction_type(prediction_type)
        self.traces = 0
        tables = diffusion_tables() if tables is None else tables

        def step(state, batch):
            self.traces += 1
            key = jax.random.fold_in(state["rng"], state["step"])

            def loss_fn(params):
                model = nnx.merge(graphdef, params, state["buffers"])
                inputs = draw_training_inputs(key, batch, tables, caption_dropout, state["buffers"]["y_embedding"],
                                              latent_scale)
                return pixart_loss(model, batch, tables, *inputs, prediction_type)

            params, opt, ema, metrics = optimizer_update(tx, schedule, accum_steps, loss_fn, state["params"],
                                                         state["opt"], state["ema"], ema_rate, state["step"])
            return dict(state, step=state["step"] + 1, params=params, opt=opt, ema=ema), metrics

        self._compile(step, state_shardings, mesh)

    def _compile(self, step, state_shardings, mesh):
        """Jits `step` with explicit shardings and the state donated (shared by every step built like this one)."""
        self._jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                               out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
        # XLA:CPU runs every device's share of a program on one thread pool: with several multi-device steps
        # queued, collectives can starve (seen as a rendezvous timeout), so on CPU one step runs at a time.
        self._one_at_a_time = mesh.devices.flat[0].platform == "cpu" and mesh.size > 1

    def lower(self, state, batch):
        """The step lowered for these arguments, which may be abstract (ShapeDtypeStructs with shardings):
        `.compile()` builds it ahead of time, e.g. for a TPU slice this machine does not have (training/plan.py)."""
        return self._jitted.lower(state, batch)

    def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
        out = self._jitted(state, batch)
        return jax.block_until_ready(out) if self._one_at_a_time else out
