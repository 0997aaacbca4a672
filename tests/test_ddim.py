"""DDIM (η = 0) against its defining property and formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixart_jax.ddim import ddim_sample, ddim_step, ddim_timesteps
from pixart_jax.schedule import alphas_cumprod


def test_schedule_endpoints():
    acp = alphas_cumprod()
    assert acp.shape == (1000,)
    np.testing.assert_allclose(acp[0], 0.9999)
    np.testing.assert_allclose(acp[-1], 4.0358e-5, rtol=1e-4)


def test_timesteps():
    np.testing.assert_array_equal(ddim_timesteps(4), [750, 500, 250, 0])
    with pytest.raises(ValueError, match="must be positive, got 0"):
        ddim_timesteps(0)


def test_step_formula():
    x, eps = jnp.array([0.3, -1.2]), jnp.array([0.5, 0.1])
    a, ap = 0.4, 0.9
    x0 = (np.asarray(x) - np.sqrt(1 - a) * np.asarray(eps)) / np.sqrt(a)
    np.testing.assert_allclose(ddim_step(x, eps, a, ap), np.sqrt(ap) * x0 + np.sqrt(1 - ap) * np.asarray(eps),
                               rtol=1e-6)


def test_oracle_noise_prediction_recovers_the_clean_sample():
    """With the true ε, every DDIM step stays on x_t = √ᾱ x0 + √(1-ᾱ) ε and the loop ends exactly at x0."""
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key0, (2, 4, 8, 8))
    eps = jax.random.normal(key1, x0.shape)
    a_T = alphas_cumprod()[ddim_timesteps(10)[0]]
    x_T = np.sqrt(a_T) * x0 + np.sqrt(1 - a_T) * eps
    out = jax.jit(lambda x: ddim_sample(lambda x, t: eps, x, 10))(x_T)
    np.testing.assert_allclose(out, x0, atol=2e-4)
