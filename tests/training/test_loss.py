"""The PixArt loss against an independent float64 NumPy transcription of spec §2.1-2.2, incl. the t = 0 term, for
ε-prediction (PixArt) and v-prediction (target v = √ᾱ ε - √(1-ᾱ) x0; the variance term sees ε̂ = √ᾱ v̂ + √(1-ᾱ) x_t)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.training.loss import (
    diffusion_loss,
    diffusion_tables,
    draw_training_inputs,
    drop_captions,
    pixart_loss,
    q_sample,
)


def reference_loss(model_out, x0, noise, t, prediction_type="epsilon"):
    """Per-sample loss in float64, written from the spec's formulas (not from train/loss.py)."""
    model_out, x0, noise = (np.asarray(a, np.float64) for a in (model_out, x0, noise))
    beta = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - beta)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    tilde_beta = beta * (1 - abar_prev) / (1 - abar)
    log_var_clipped = np.log(np.concatenate([[tilde_beta[1]], tilde_beta[1:]]))
    c1 = beta * np.sqrt(abar_prev) / (1 - abar)
    c2 = (1 - abar_prev) * np.sqrt(1 - beta) / (1 - abar)
    cdf = lambda z: 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    losses = []
    for i, ti in enumerate(t):
        ab = abar[ti]
        x_t = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        prediction, v = model_out[i, :4], model_out[i, 4:]
        if prediction_type == "v_prediction":
            mse = np.mean((math.sqrt(ab) * noise[i] - math.sqrt(1 - ab) * x0[i] - prediction) ** 2)
            eps_hat = math.sqrt(ab) * prediction + math.sqrt(1 - ab) * x_t
        else:
            mse = np.mean((noise[i] - prediction) ** 2)
            eps_hat = prediction
        x0_pred = math.sqrt(1 / ab) * x_t - math.sqrt(1 / ab - 1) * eps_hat
        mu_true = c1[ti] * x0[i] + c2[ti] * x_t
        mu_model = c1[ti] * x0_pred + c2[ti] * x_t
        frac = (v + 1) / 2
        logvar_model = frac * np.log(beta[ti]) + (1 - frac) * log_var_clipped[ti]
        if ti > 0:
            lv1 = log_var_clipped[ti]
            kl = 0.5 * (-1 + logvar_model - lv1 + np.exp(lv1 - logvar_model)
                        + (mu_true - mu_model) ** 2 * np.exp(-logvar_model))
            vb = np.mean(kl) / math.log(2)
        else:
            sigma = np.exp(0.5 * logvar_model)
            upper = cdf((x0[i] - mu_model + 1 / 255) / sigma)
            lower = cdf((x0[i] - mu_model - 1 / 255) / sigma)
            logp = np.where(x0[i] < -0.999, np.log(np.maximum(upper, 1e-12)),
                            np.where(x0[i] > 0.999, np.log(np.maximum(1 - lower, 1e-12)),
                                     np.log(np.maximum(upper - lower, 1e-12))))
            vb = -np.mean(logp) / math.log(2)
        losses.append(mse + vb)
    return np.array(losses)


def random_case(seed, batch=6, size=8, prediction_type="epsilon"):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1.2, 1.2, (batch, 4, size, size)).astype(np.float32)  # some pixels in the edge bins
    noise = rng.standard_normal((batch, 4, size, size)).astype(np.float32)
    t = np.array([0, 0, 1, 17, 500, 999][:batch], np.int32)
    target = noise
    if prediction_type == "v_prediction":
        abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t].reshape(-1, 1, 1, 1)
        target = np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0
    model_out = np.concatenate([target + 0.3 * rng.standard_normal(noise.shape),
                                rng.uniform(-1, 1, noise.shape)], axis=1).astype(np.float32)
    return model_out, x0, noise, t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_matches_float64_reference(prediction_type):
    model_out, x0, noise, t = random_case(0, prediction_type=prediction_type)
    tables = diffusion_tables()
    x_t = q_sample(tables, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    ours = np.asarray(diffusion_loss(tables, jnp.asarray(model_out), jnp.asarray(x0), x_t, jnp.asarray(t),
                                     jnp.asarray(noise), prediction_type))
    ref = reference_loss(model_out, x0, noise, t, prediction_type)
    err = np.abs(ours - ref).max()
    print(f"loss parity: max |ours - float64 reference| = {err:.2e} (per-sample losses {np.round(ref, 3)})")
    assert err < 1e-5
    assert abs(ours.mean() - ref.mean()) < 1e-5


def test_vb_term_does_not_train_the_mean():
    model_out, x0, noise, t = random_case(1)
    tables = diffusion_tables()
    x0, noise, t = jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t)
    x_t = q_sample(tables, x0, t, noise)
    grad = jax.grad(lambda out: diffusion_loss(tables, out, x0, x_t, t, noise).sum())(jnp.asarray(model_out))
    mse_grad = -2 * (noise - model_out[:, :4]) / noise[0].size
    np.testing.assert_allclose(grad[:, :4], mse_grad, rtol=1e-5, atol=1e-8)
    assert np.abs(np.asarray(grad[:, 4:])).max() > 0


def test_caption_dropout_replaces_whole_captions_only():
    captions = jnp.asarray(np.random.default_rng(0).standard_normal((64, 5, 3)), jnp.float32)
    null = jnp.full((5, 3), 7.0)
    key = jax.random.key(1)
    assert (drop_captions(captions, null, key, 0.0) == captions).all()
    assert (drop_captions(captions, null, key, 1.0) == 7.0).all()
    dropped = np.asarray((drop_captions(captions, null, key, 0.5) == 7.0).all(axis=(1, 2)))
    kept = np.asarray((drop_captions(captions, null, key, 0.5) == captions).all(axis=(1, 2)))
    assert (dropped ^ kept).all() and 10 < dropped.sum() < 54


def test_model_loss_matches_reference_on_the_model_output():
    cfg = PRESETS["tiny"]
    model = PixArtTransformer(cfg, rngs=nnx.Rngs(0))
    # the reference init zeroes the output layer; give it weights so ε̂ and v are not all zero
    kernel = model.final_layer.linear.kernel
    kernel.set_value(0.05 * jax.random.normal(jax.random.key(3), kernel.get_value().shape))
    rng = np.random.default_rng(2)
    batch = {"mean": rng.standard_normal((4, 4, 8, 8)).astype(np.float32),
             "std": np.full((4, 4, 8, 8), 0.1, np.float32),
             "caption": rng.standard_normal((4, cfg.max_tokens, cfg.caption_channels)).astype(np.float32),
             "mask": (np.arange(cfg.max_tokens) < 9).astype(np.int32)[None].repeat(4, 0),
             "img_hw": np.full((4, 2), 64.0, np.float32), "aspect_ratio": np.ones((4, 1), np.float32)}
    tables = diffusion_tables()
    x0, t, noise, captions = draw_training_inputs(jax.random.key(5), batch, tables, 0.5,
                                                  model.y_embedding.get_value())
    t = t.at[0].set(0)
    loss = float(pixart_loss(model, batch, tables, x0, t, noise, captions))
    x_t = q_sample(tables, x0, t, noise)
    out = model(x_t, t, captions, batch["mask"], resolution=batch["img_hw"], aspect_ratio=batch["aspect_ratio"])
    ref = reference_loss(out, x0, noise, np.asarray(t)).mean()
    print(f"model loss {loss:.6f} vs reference {ref:.6f}")
    assert abs(loss - ref) < 1e-5
    # x0 is 0.18215 x a posterior sample: mean within a few std of the stored posterior mean
    assert np.abs(np.asarray(x0) / 0.18215 - batch["mean"]).max() < 0.1 * 6


@pytest.mark.parametrize("t", [0, 999])
def test_tables_match_spec_values(t):
    tables = diffusion_tables()
    abar = tables.sqrt_alphas_cumprod[t] ** 2
    assert abar == pytest.approx({0: 0.9999, 999: 4.0358e-5}[t], rel=1e-4)
