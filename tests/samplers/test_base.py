"""The one-jit denoising loops: equal to the per-step functions run one at a time, compile once per
(shape, steps), noise from a key is the documented per-step draw."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixart_jax.samplers import DDIM, LCM, PCM, TCD, DPMSolverMultistep, LearnedVarianceDDPM, SASolver, table_row
from tests.helpers.inputs import SHAPE
from tests.helpers.parity import rel_error

SAMPLERS = {
    "ddim": DDIM(), "ddim_eta": DDIM(eta=0.5, timestep_spacing="trailing"), "dpm": DPMSolverMultistep(),
    "dpm_repo": DPMSolverMultistep(convention="repo"), "lcm": LCM(), "lcm_repo": LCM(convention="repo"),
    "ddpm": LearnedVarianceDDPM(), "tcd": TCD(), "pcm": PCM(), "sa": SASolver(),
    "sa_orders_3_4": SASolver(predictor_order=3, corrector_order=4, algorithm_type="noise_prediction"),
}


def output_shape(sampler, shape=SHAPE):
    return sampler.model_output_shape(shape)


def scripted_model(sampler, steps, shape=SHAPE):
    """model_fn(x, t) = (a fixed random output for t's step) + 0.1·x: depends on both inputs."""
    outputs = jnp.asarray(np.random.default_rng(1).standard_normal((steps, *output_shape(sampler, shape))),
                          jnp.float32)
    timesteps = jnp.asarray(sampler.timesteps(steps), jnp.float32)

    def model_fn(x, t):
        i = jnp.argmax(timesteps == t[0])
        x_part = jnp.concatenate([x, jnp.zeros_like(x)], axis=1) if isinstance(sampler, LearnedVarianceDDPM) else x
        return jnp.tanh(outputs[i] + 0.1 * x_part)  # tanh keeps the learned-variance v within [-1, 1]

    return model_fn


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 4, 12])
def test_jitted_loop_equals_the_per_step_functions(name, steps):
    sampler = SAMPLERS[name]
    if name == "dpm_repo" and steps == 1:
        pytest.skip("the repo's multistep DPM-Solver needs 2 steps")
    model_fn = scripted_model(sampler, steps)
    x_T = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    noise = jnp.asarray(np.random.default_rng(2).standard_normal((steps, *SHAPE)), jnp.float32)
    final = jax.jit(lambda x, z: sampler.sample(model_fn, x, steps, noise=z))
    last_denoised = jax.jit(lambda x, z: sampler.sample(model_fn, x, steps, noise=z, return_denoised=True))

    tables = sampler.tables(steps)
    x, state = x_T, sampler.init_state(x_T)
    for i in range(steps):
        row = table_row(tables, i)
        out = model_fn(x, jnp.full((SHAPE[0],), row.timestep))
        x, denoised, state = sampler.step(row, x, out, state, noise[i])
    assert rel_error(final(x_T, noise), x) < 1e-6
    assert rel_error(last_denoised(x_T, noise), denoised) < 1e-6


@pytest.mark.parametrize("name", ["ddim_eta", "lcm", "ddpm", "tcd", "sa"])
def test_key_noise_is_a_normal_draw_per_step_key(name):
    """sample(key=k) == sample(noise=[normal(k_i) for k_i in split(k, steps)]): reproducible from the seed."""
    sampler, steps = SAMPLERS[name], 4
    model_fn = scripted_model(sampler, steps)
    x_T = jnp.ones(SHAPE)
    key = jax.random.key(3)
    noise = jnp.stack([jax.random.normal(k, SHAPE) for k in jax.random.split(key, steps)])
    by_key = jax.jit(lambda x, k: sampler.sample(model_fn, x, steps, key=k))(x_T, key)
    by_noise = jax.jit(lambda x, z: sampler.sample(model_fn, x, steps, noise=z))(x_T, noise)
    assert rel_error(by_key, by_noise) < 1e-6
    other = jax.jit(lambda x, k: sampler.sample(model_fn, x, steps, key=k))(x_T, jax.random.key(4))
    assert rel_error(other, by_key) > 1e-3


@pytest.mark.parametrize("name", ["ddim", "dpm", "lcm", "ddpm", "tcd", "sa"])
def test_loop_compiles_once_per_shape_and_steps(name):
    sampler = SAMPLERS[name]
    traces = []

    def model_fn(x, t):
        traces.append(x.shape)  # runs once per trace of the loop body, never per step or per call
        doubled = jnp.concatenate([x, -x], axis=1) if isinstance(sampler, LearnedVarianceDDPM) else x
        return 0.1 * doubled

    run = jax.jit(functools.partial(sampler.sample, model_fn), static_argnames="steps")
    key = jax.random.key(0)
    small, large = jnp.ones((1, 4, 4, 4)), jnp.ones((1, 4, 8, 4))
    run(small, steps=4, key=key)
    run(small + 1, steps=4, key=jax.random.key(1))
    assert len(traces) == 1
    run(small, steps=6, key=key)
    assert len(traces) == 2
    run(large, steps=4, key=key)
    run(large * 2, steps=4, key=key)
    assert traces == [(1, 4, 4, 4), (1, 4, 4, 4), (1, 4, 8, 4)]


def test_loop_keeps_the_sample_dtype():
    x_T = jnp.ones(SHAPE, jnp.bfloat16)
    out = jax.jit(lambda x: DPMSolverMultistep().sample(lambda x, t: 0.5 * x, x, 5))(x_T)
    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out.astype(jnp.float32)).all())
