"""The jitted train step on 8 fake CPU devices: overfitting, mesh equivalence, FSDP placement, trace counts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pixart_jax.sharding import device_batch, make_mesh
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.training.config import load_config
from pixart_jax.training.data import stack_examples
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.optimizer import make_optimizer, peak_learning_rate
from pixart_jax.training.pretraining import Pretraining
from pixart_jax.training.program import build_model
from pixart_jax.training.state import split_model
from pixart_jax.training.synthetic import synthetic_examples
from tests.helpers.paths import CONFIGS

TINY = CONFIGS / "tiny.yaml"
OVERRIDES = ["workdir=unused", "optimizer.warmup_steps=0", "optimizer.weight_decay=0", "optimizer.lr=2e-3"]


def setup(mesh_shape, *overrides):
    """(cfg, mesh, state, step, graphdef) for the tiny model on a (data, fsdp) mesh."""
    program = Pretraining(load_config(TINY, OVERRIDES + list(overrides)))
    mesh = make_mesh(*mesh_shape)
    model = program.model()
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
    return program.cfg, mesh, state, program.step(model, mesh), split_model(model)[0]


def batches(buckets=("1.0",), count=8, seed=0):
    examples = synthetic_examples(count * len(buckets), seed=seed, caption_channels=32, buckets=buckets)
    return [stack_examples([e for e in examples if e["bucket"] == b]) for b in buckets]


def test_tiny_model_overfits_a_small_batch():
    cfg, mesh, state, step, graphdef = setup((8, 1))
    (batch,) = batches()
    tables = diffusion_tables()
    t_eval = jnp.asarray(np.linspace(0, 999, 64).astype(np.int32))

    @jax.jit
    def eval_loss(params, buffers, batch):  # fixed timesteps (spread over 0..999), noise and posterior draws
        model = nnx.merge(graphdef, params, buffers)
        batch = {k: jnp.repeat(v, 8, axis=0) for k, v in batch.items()}
        x0, _, noise, captions = draw_training_inputs(jax.random.key(123), batch, tables, 0.0, None)
        return pixart_loss(model, batch, tables, x0, t_eval, noise, captions)

    with jax.set_mesh(mesh):
        db = device_batch(batch, mesh)
        before = float(eval_loss(state["params"], state["buffers"], db))
        for _ in range(100):
            state, metrics = step(state, db)
        after = float(eval_loss(state["params"], state["buffers"], db))
        ema_after = float(eval_loss(state["ema"], state["buffers"], db))
    print(f"overfit: fixed-input loss {before:.4f} -> {after:.4f} after 100 steps (factor {before / after:.1f}); "
          f"EMA(0.99) weights {ema_after:.4f}")
    assert before / after > 5
    assert ema_after < before


def run_three_steps(mesh_shape):
    cfg, mesh, state, step, _ = setup(mesh_shape)
    batch = batches()[0]
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, metrics = step(state, device_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
        params = jax.tree.map(np.asarray, state["params"])
    return losses, params, state


def test_meshes_give_the_same_losses():
    runs = {shape: run_three_steps(shape) for shape in [(8, 1), (4, 2), (1, 8)]}
    ref_losses, ref_params, _ = runs[(8, 1)]
    worst_loss = worst_param = 0.0
    for shape, (losses, params, _) in runs.items():
        worst_loss = max(worst_loss, np.abs(np.subtract(losses, ref_losses)).max())
        worst_param = max(worst_param, max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params),
                                                                               jax.tree.leaves(ref_params))))
    print(f"mesh equivalence over 3 steps, meshes {list(runs)}: losses {np.round(ref_losses, 6)}, max loss diff "
          f"{worst_loss:.2e}, max parameter diff {worst_param:.2e}")
    assert worst_loss < 1e-6
    # Adam divides by √ν: where a gradient is ~0 (zero-initialised layers) rounding-level differences from another
    # reduction order move a weight by a fraction of one lr (2e-3) step; that bounds the parameter difference
    assert worst_param < 1e-4
    fsdp_state = runs[(1, 8)][2]
    assert fsdp_state["params"]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", None)
    assert fsdp_state["opt"][1][0].mu["y_proj"]["fc1"]["kernel"].sharding.spec == P("fsdp", None)
    assert fsdp_state["buffers"]["y_embedding"].sharding.spec == P(None, None)


def test_one_compile_per_bucket_shape():
    cfg, mesh, state, step, _ = setup((8, 1))
    square, wide = batches(("1.0", "0.5"))
    with jax.set_mesh(mesh):
        for batch in [square, wide, square, square, wide, wide, square]:
            state, metrics = step(state, device_batch(batch, mesh))
    print(f"trace count: {step.traces} traces for 7 steps over 2 bucket shapes")
    assert step.traces == 2


def fixed_loss(cfg_overrides, batch, seed=5):
    """(loss_fn(params), params) of the tiny model (every parameter re-drawn: the zero-initialised output layer
    would make the loss constant) on `batch` with fixed draws of x0, t, noise (no dropout)."""
    cfg = load_config(TINY, OVERRIDES + list(cfg_overrides))
    model = redraw_nnx(build_model(cfg.model, cfg.seed), seed)
    graphdef, params, buffers = split_model(model)
    tables = diffusion_tables()
    inputs = draw_training_inputs(jax.random.key(seed), batch, tables, 0.0, None)

    def loss_fn(params):
        return pixart_loss(nnx.merge(graphdef, params, buffers), batch, tables, *inputs)
    return loss_fn, params


def max_rel(a, b):
    return max(float(jnp.abs(x - y).max() / jnp.abs(y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("policy", ["block", "dots"])
def test_remat_gives_the_same_loss_and_gradients(policy):
    (batch,) = batches()
    results = []
    for overrides in ([], [f"model.remat={policy}"]):
        loss_fn, params = fixed_loss(overrides, batch)
        results.append(jax.jit(jax.value_and_grad(loss_fn))(params))
    (loss, grads), (loss_remat, grads_remat) = results
    assert float(loss) == pytest.approx(float(loss_remat), rel=1e-6)
    assert max_rel(grads_remat, grads) < 1e-5


def test_accumulating_two_micro_batches_equals_one_double_batch():
    """Optimizer.update (what every train step calls) with grad_accum_steps=2 over two halves of a batch moves the
    parameters exactly as one update on the whole batch (the mean loss's gradient; clipping applies to the mean)."""
    whole = batches(count=16)[0]
    cfg = load_config(TINY, OVERRIDES + ["optimizer.grad_clip=0.05"])
    model = redraw_nnx(build_model(cfg.model, cfg.seed), 5)
    graphdef, params, buffers = split_model(model)
    tables = diffusion_tables()
    x0, t, noise, captions = draw_training_inputs(jax.random.key(5), whole, tables, 0.0, None)

    def loss_on(rows):
        batch = {k: v[rows] for k, v in whole.items()}
        return lambda p: pixart_loss(nnx.merge(graphdef, p, buffers), batch, tables, x0[rows], t[rows], noise[rows],
                                     captions[rows])

    def updated(accum, loss_fns):
        optimizer = make_optimizer(dataclasses.replace(cfg.optimizer, grad_accum_steps=accum), 16)
        p, opt, ema = params, optimizer.tx.init(params), params
        for step, loss_fn in enumerate(loss_fns):
            p, opt, ema, _ = jax.jit(lambda p, o, e, s, f=loss_fn: optimizer.update(f, p, o, e, 0.5, s))(
                p, opt, ema, step)
        return p, ema

    one, one_ema = updated(1, [loss_on(slice(0, 16))])
    two, two_ema = updated(2, [loss_on(slice(0, 8)), loss_on(slice(8, 16))])
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(params)))
    assert moved > 1e-5
    # Adam's first step is lr·g/(|g|+ε): rounding of the averaged gradient shows only where |g| is tiny (measured
    # 1.4e-3 of the step); a wrong accumulation (one micro-batch's gradient alone) changes signs: ~1 of the step.
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one))) < 1e-2 * moved
    # the EMA (rate 0.5) moves once, after the completed update, towards the updated parameters
    expected = jax.tree.map(lambda p, q: 0.5 * p + 0.5 * q, params, two)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(two_ema), jax.tree.leaves(expected))) < 1e-7
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(two_ema), jax.tree.leaves(one_ema))) < (
        1e-2 * moved)


def test_bf16_compute_loss_is_close_to_fp32():
    (batch,) = batches()
    loss_fn, params = fixed_loss([], batch)
    loss_bf16, _ = fixed_loss(["model.compute_dtype=bfloat16"], batch)
    fp32, bf16 = float(jax.jit(loss_fn)(params)), float(jax.jit(loss_bf16)(params))
    print(f"tiny model loss: fp32 {fp32:.6f}, bf16 compute {bf16:.6f}")
    assert bf16 == pytest.approx(fp32, rel=1e-2) and bf16 != fp32


@pytest.mark.parametrize("sqrt, expected", [(True, 2e-5 * np.sqrt(1024 / 256)), (False, 2e-5)])
def test_sqrt_lr_scaling_uses_the_global_batch(sqrt, expected):
    cfg = load_config(TINY, ["workdir=w", "optimizer.lr=2e-5", f"optimizer.sqrt_lr_scaling={sqrt}",
                             "optimizer.grad_accum_steps=2"])
    assert peak_learning_rate(cfg.optimizer, 512) == pytest.approx(expected)


def test_warmup_is_linear_from_zero():
    cfg = load_config(TINY, ["workdir=w", "optimizer.warmup_steps=4", "optimizer.lr=1.0"])
    schedule = make_optimizer(cfg.optimizer, 8).schedule
    assert [float(schedule(k)) for k in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_came_trains_on_a_sharded_mesh_with_factored_moments():
    """optimizer.name: came (PixArt-Σ) on data 4 × fsdp 2: the fixed-batch loss falls, and its state holds one
    parameter-sized moment where AdamW holds two."""
    _, mesh, state, step, _ = setup((4, 2), "optimizer.name=came", "optimizer.lr=1e-3")
    (batch,) = batches()
    with jax.set_mesh(mesh):
        db = device_batch(batch, mesh)
        losses = []
        for _ in range(16):
            state, metrics = step(state, db)  # the state is donated: only the returned one lives on
            losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    sizes = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))  # noqa: E731
    adamw_state = setup((8, 1))[2]
    params = sizes(state["params"])
    assert sizes(adamw_state["opt"]) > 2 * params > sizes(state["opt"]) > params
