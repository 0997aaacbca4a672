"""Deterministic DDIM sampling (η = 0) as pure functions; the whole loop runs inside one jitted call."""
import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod


def ddim_timesteps(steps, num_train_timesteps=NUM_TRAIN_TIMESTEPS):
    """Evenly spaced training timesteps, descending: 0, k, 2k, ... reversed, k = num_train // steps."""
    if steps < 1:
        raise ValueError(f"number of steps must be positive, got {steps}")
    return (np.arange(steps) * (num_train_timesteps // steps))[::-1].astype(np.int32)


def ddim_step(x, eps, alpha_t, alpha_prev):
    """x_t -> x_prev from the ε prediction: predicted x_0 re-noised to the previous level without fresh noise."""
    x0 = (x - jnp.sqrt(1 - alpha_t) * eps) / jnp.sqrt(alpha_t)
    return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1 - alpha_prev) * eps


def ddim_sample(eps_fn, noise, steps):
    """Runs DDIM from `noise` (x_T); eps_fn(x, t (B,)) returns the ε prediction. Jit-compatible."""
    timesteps = ddim_timesteps(steps)
    acp = alphas_cumprod()
    alpha = jnp.asarray(acp[timesteps], jnp.float32)
    alpha_prev = jnp.asarray(np.append(acp[timesteps[1:]], 1.0), jnp.float32)  # the last step lands on x_0
    ts = jnp.asarray(timesteps, jnp.float32)

    def body(i, x):
        t = jnp.full((x.shape[0],), ts[i])
        return ddim_step(x, eps_fn(x, t), alpha[i], alpha_prev[i])

    return jax.lax.fori_loop(0, steps, body, noise)
