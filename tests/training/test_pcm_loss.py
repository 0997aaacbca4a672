"""PCM math (consistency.md §2, §4) against an independent float64 NumPy version, the spec's golden value and its
invariants: boundary identity, the Dirac-oracle teacher, gradient flow, re-noising and hinge losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixart_jax.training.lcm_loss import Distance, ddim_jump
from pixart_jax.training.pcm_loss import (
    adversarial_timesteps,
    hinge_discriminator_loss,
    hinge_generator_loss,
    pcm_loss,
    pcm_tables,
    renoise,
)
from tests.helpers.inputs import abar64, golden_tensors
from tests.helpers.parity import rel_error


def test_tables_for_the_released_grids():
    t40 = pcm_tables(40, 4)
    np.testing.assert_array_equal(t40.tau, np.arange(24, 1000, 25))
    np.testing.assert_array_equal(np.unique(t40.edge), [0, 249, 499, 749])
    assert np.flatnonzero(t40.is_edge).tolist() == [0, 10, 20, 30] and t40.adversarial_span == 250
    t50 = pcm_tables(50, 4)
    assert np.unique(t50.edge).tolist() == [0, 239, 499, 739] and np.flatnonzero(t50.is_edge).tolist() == [0, 12, 25,
                                                                                                               37]


def test_phase_jump_golden_value():
    """§4.2: the DDIM jump with ε_c = sin(i) from 619 to 499 (N = 50, M = 4, j = 30), float64 schedule."""
    tables = pcm_tables(50, 4)
    x, eps, _ = (jnp.asarray(a, jnp.float32) for a in golden_tensors())
    j = jnp.array([30])
    assert int(tables.tau[j][0]) == 619 and int(tables.edge[j][0]) == 499
    out = np.asarray(ddim_jump(tables, x, eps, tables.tau[j], tables.edge[j])).ravel()
    np.testing.assert_allclose(out[:4], [-1.84782656, -2.43541047, -2.25625469, -1.24855643], rtol=1e-5)
    np.testing.assert_allclose(out.sum(), -1.91841129, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_jump_to_its_own_timestep_is_the_identity(prediction_type):
    """F(x, s -> s) = x for any prediction (the boundary condition is built in)."""
    tables = pcm_tables()
    x, out = (jax.random.normal(jax.random.key(i), (5, 4, 3, 3)) for i in (0, 1))
    s = jnp.array([0, 249, 499, 749, 999])
    np.testing.assert_allclose(ddim_jump(tables, x, 10 * out, s, s, prediction_type), x, atol=2e-5)


def numpy_edges(n, phases):
    """Spec §2.2 from scratch: the lower-edge timestep of every grid index and whether it is an edge index."""
    tau = (1000 // n) * (np.arange(n) + 1) - 1
    starts = [m * n // phases for m in range(phases)]
    edge, is_edge = np.zeros(n, np.int64), np.zeros(n, bool)
    for j in range(n):
        m = max(k for k, e in enumerate(starts) if e <= j)
        edge[j] = 0 if m == 0 else tau[starts[m] - 1]
        is_edge[j] = j == starts[m]
    return tau, edge, is_edge


def numpy_pcm_loss(x0, noise, n, w, student, teacher_c, teacher_u, target, phases, guided=True, loss_type="huber",
                   prediction_type="epsilon", c=1e-3):
    """§2.4 in float64 with linear models out(x) = k x per role (v-prediction: x̂0 = a x - σ v, ε̂ = a v + σ x)."""
    abar = abar64()
    a, s = np.sqrt(abar), np.sqrt(1 - abar)
    tau, edges, is_edge = numpy_edges(40, phases)
    t, t_prev, edge = tau[n], np.maximum(tau[n] - 25, 0), edges[n]
    col = lambda v: v[:, None, None, None]  # noqa: E731

    def jump(x, out, t_from, t_to):
        if prediction_type == "v_prediction":
            x0_hat, eps_hat = col(a[t_from]) * x - col(s[t_from]) * out, col(a[t_from]) * out + col(s[t_from]) * x
        else:
            x0_hat, eps_hat = (x - col(s[t_from]) * out) / col(a[t_from]), out
        return col(a[t_to]) * x0_hat + col(s[t_to]) * eps_hat

    x_t = col(a[t]) * x0 + col(s[t]) * noise
    o_c = teacher_c * x_t
    teacher_out = o_c + col(w) * (o_c - teacher_u * x_t) if guided else o_c
    x_e = jump(x_t, teacher_out, t, t_prev)
    y = np.where(col(is_edge[n]), x_e, jump(x_e, target * x_e, t_prev, edge))
    d = jump(x_t, student * x_t, t, edge) - y
    return np.mean(np.sqrt(d * d + c * c) - c) if loss_type == "huber" else np.mean(d * d)


@pytest.mark.parametrize("phases", [1, 2, 4, 8])
@pytest.mark.parametrize("guided,loss_type,prediction_type", [(True, "huber", "epsilon"), (False, "l2", "epsilon"),
                                                              (True, "huber", "v_prediction")])
def test_loss_matches_numpy_and_gradients_reach_only_the_student(phases, guided, loss_type, prediction_type):
    rng = np.random.default_rng(phases)
    x0 = rng.standard_normal((40, 4, 3, 3)) * 0.8
    noise = rng.standard_normal(x0.shape)
    n = np.arange(40)  # every grid index: edge and inner indices of every phase
    w = rng.uniform(3, 4, 40)
    scales = dict(student=0.9, teacher_c=1.1, teacher_u=0.7, target=0.95)
    expected = numpy_pcm_loss(x0, noise, n, w, **scales, phases=phases, guided=guided, loss_type=loss_type,
                              prediction_type=prediction_type)
    tables = pcm_tables(40, phases)

    def loss(params):
        def teacher(x, t):
            out_c = params["teacher_c"] * x
            return out_c + jnp.asarray(w, jnp.float32)[:, None, None, None] * (out_c - params["teacher_u"] * x) \
                if guided else out_c
        return pcm_loss(lambda x, t: params["student"] * x, teacher, lambda x, t: params["target"] * x, tables,
                        jnp.asarray(x0, jnp.float32), jnp.asarray(noise, jnp.float32), jnp.asarray(n),
                        Distance(loss_type), prediction_type=prediction_type)[0]

    params = {k: jnp.float32(v) for k, v in scales.items()}
    value, grads = jax.value_and_grad(loss)(params)
    print(f"M={phases} {loss_type} {prediction_type}: ours {float(value):.8e}, float64 {expected:.8e}")
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)
    assert grads["student"] != 0
    assert grads["teacher_c"] == grads["teacher_u"] == grads["target"] == 0


@pytest.mark.parametrize("phases", [1, 4, 8])
def test_loss_with_the_guided_oracle_as_student_and_target_is_zero(phases):
    """Dirac oracle (§4.3): data x̃ = (1 + w) x* - w x*_u, teacher ε*(x, t) = (x - a_t x*)/σ_t (and x*_u): its guided
    DDIM step is exact, and so is every jump of a student and target that are the guided oracle: L = 0 at every j."""
    tables = pcm_tables(40, phases)
    x_star, x_star_u, w = 1.3, -0.4, 4.5
    x_tilde = (1 + w) * x_star - w * x_star_u
    eps0 = jax.random.normal(jax.random.key(3), (40, 4, 2, 2))
    col = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    oracle = lambda star: lambda x, t: (x - col(tables.a[t]) * star) / col(tables.sigma[t])  # noqa: E731

    def teacher(x, t):
        out_c, out_u = oracle(x_star)(x, t), oracle(x_star_u)(x, t)
        return out_c + w * (out_c - out_u)

    loss, (prediction, goal) = pcm_loss(oracle(x_tilde), teacher, oracle(x_tilde), tables,
                                        jnp.full(eps0.shape, x_tilde), eps0, jnp.arange(40), Distance("l2"))
    edge = col(tables.edge[jnp.arange(40)])
    on_trajectory = col(tables.a[edge.ravel()]) * x_tilde + col(tables.sigma[edge.ravel()]) * eps0
    assert rel_error(prediction, on_trajectory) < 1e-5 and rel_error(goal, on_trajectory) < 1e-5  # float32 rounding
    assert float(loss) < (1e-5 * x_tilde) ** 2


def test_adversarial_timesteps_and_renoising():
    """t_adv ∈ [s, s + T/M); re-noising from s to s is the identity; to t_adv it keeps the marginal's variance."""
    tables = pcm_tables(40, 4)
    n = jnp.tile(jnp.arange(40), 50)
    t_adv = np.asarray(adversarial_timesteps(jax.random.key(0), tables, n))
    edge = np.asarray(tables.edge[n])
    assert (t_adv >= edge).all() and (t_adv < edge + 250).all() and len(np.unique(t_adv - edge)) > 200
    x, xi = (jax.random.normal(jax.random.key(i), (4, 4, 8, 8)) for i in (1, 2))
    s = jnp.array([0, 249, 499, 749])
    np.testing.assert_allclose(renoise(tables, x, s, s, xi), x, rtol=1e-6)
    # the forward process from s to t_adv: the data part a_s x0 becomes a_adv x0, and the noise of x_s (std σ_s)
    # plus the fresh noise have the std σ_adv of x_t_adv's marginal
    s, t = jnp.array([0, 249, 499, 749]), jnp.array([200, 400, 700, 998])
    col = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    np.testing.assert_allclose(renoise(tables, col(tables.a[s]) * x, s, t, jnp.zeros_like(x)),
                               col(tables.a[t]) * x, rtol=1e-5)
    unit = jnp.ones_like(x)
    kept, fresh = renoise(tables, unit, s, t, 0 * unit), renoise(tables, 0 * unit, s, t, unit)
    np.testing.assert_allclose((kept * col(tables.sigma[s])) ** 2 + fresh ** 2, (col(tables.sigma[t]) * unit) ** 2,
                               rtol=1e-5)


def test_hinge_losses():
    rng = np.random.default_rng(0)
    fake, real = rng.standard_normal((2, 3, 4, 5, 5, 1)).astype(np.float32)
    expected_d = np.mean([np.maximum(0, 1 + f).mean() + np.maximum(0, 1 - r).mean() for f, r in zip(fake, real)])
    np.testing.assert_allclose(float(hinge_discriminator_loss(fake, real)), expected_d, rtol=1e-6)
    np.testing.assert_allclose(float(hinge_generator_loss(fake)), np.mean([np.maximum(0, 1 - f).mean() for f in fake]),
                               rtol=1e-6)
