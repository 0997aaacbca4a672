"""The consistency samplers against the spec (consistency.md §1.10, §2.2, §2.7, §4.1-4.3): phase-edge tables, TCD
and PCM golden values of diffusers 0.42.1, oracle properties of TCD, PCM and SA-Solver, bad input. No torch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixart_jax.samplers import LCM, PCM, TCD, DDPMSchedule, SASolver, table_row
from pixart_jax.samplers.phases import phase_edge_indices, phase_edges, phase_of_indices, phase_timesteps
from tests.helpers.inputs import SHAPE, assert_golden, golden_inputs, randn

F32 = DDPMSchedule(dtype="float32")

PHASE_TABLE = {  # consistency.md §2.2: M -> (N = 50 edge indices, N = 50 edges, N = 40 edges)
    1: ([0], [0], [0]),
    2: ([0, 25], [0, 499], [0, 499]),
    4: ([0, 12, 25, 37], [0, 239, 499, 739], [0, 249, 499, 749]),
    8: ([0, 6, 12, 18, 25, 31, 37, 43], [0, 119, 239, 359, 499, 619, 739, 859],
        [0, 124, 249, 374, 499, 624, 749, 874]),
    16: ([0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 46],
         [0, 59, 119, 179, 239, 299, 359, 419, 499, 559, 619, 679, 739, 799, 859, 919],
         [0, 49, 124, 174, 249, 299, 374, 424, 499, 549, 624, 674, 749, 799, 874, 924]),
}


@pytest.mark.parametrize("phases", PHASE_TABLE)
def test_phase_edge_tables(phases):
    indices, edges_50, edges_40 = PHASE_TABLE[phases]
    assert phase_edge_indices(50, phases).tolist() == indices
    assert phase_edges(1000, 50, phases).tolist() == edges_50
    assert phase_edges(1000, 40, phases).tolist() == edges_40
    # the deterministic sampler visits 999 and the edges above 0
    assert PCM().timesteps(phases).tolist() == [999] + edges_40[:0:-1]
    assert PCM(original_inference_steps=50).timesteps(phases).tolist() == [999] + edges_50[:0:-1]


@pytest.mark.parametrize("phases", [1, 2, 4, 8])
def test_on_40_points_the_edges_are_ddim_trailing_and_tcd_timesteps(phases):
    """§2.2: N = 40 makes the edges of M ∈ {1, 2, 4, 8} diffusers' trailing DDIM and TCD timesteps."""
    trailing = np.round(1000 - np.arange(phases) * 1000 / phases) - 1
    np.testing.assert_array_equal(phase_timesteps(1000, 40, phases), trailing)
    np.testing.assert_array_equal(TCD(original_inference_steps=40).timesteps(phases), trailing)


def test_every_grid_index_maps_to_the_edge_below_its_phase():
    """N = 50, M = 4: indices 0-11 -> 0, 12-24 -> τ_11 = 239, 25-36 -> 499, 37-49 -> 739; edges at 0, 12, 25, 37."""
    edge, is_edge = phase_of_indices(1000, 50, 4)
    np.testing.assert_array_equal(edge, [0] * 12 + [239] * 13 + [499] * 12 + [739] * 13)
    assert np.flatnonzero(is_edge).tolist() == [0, 12, 25, 37]
    grid = np.arange(19, 1000, 20)
    assert (edge < grid).all()  # every point is mapped strictly below itself


def test_tcd_timesteps_are_lcm_timesteps():
    for steps in (1, 2, 3, 4, 6, 8, 50):
        np.testing.assert_array_equal(TCD().timesteps(steps), LCM().timesteps(steps))


def test_tcd_steps_match_diffusers_golden_values():
    """§4.2: independent TCDScheduler.step calls (K = 4) on the same (x, ε̂, z) in float32."""
    x, eps, z = golden_inputs()
    stochastic = [([-6.94101954, -13.25292206, -13.68700314, -6.87388468], -15.22043610),
                  ([-4.04882812, -7.80505228, -8.28969097, -4.45650339], -8.63465646),
                  ([-1.81487012, -3.40089059, -3.73987961, -2.23098278], -3.40722030),
                  ([-1.32893372, -1.98878133, -1.87905955, -0.93773699], -1.92549170)]
    sampler = TCD(schedule=F32)
    tables = sampler.tables(4)
    for i, prev in enumerate(stochastic):
        out, noised, _ = sampler.step(table_row(tables, i), x, eps, (), z)
        assert_golden(out, *prev)
        if i == 0:
            assert_golden(noised, [-35.01509476, -60.95681000, -58.75546646, -26.14261246], -70.41497040)
    deterministic = [([-7.91513586, -13.12376213, -12.57331657, -5.79959011], -14.40941498),
                     ([-4.89997339, -7.83064699, -7.46620464, -3.54104447], -8.24450356),
                     ([-2.35907340, -3.48062992, -3.28184295, -1.65628719], -3.30354759)]
    sampler = sampler.with_eta(0.0)
    tables = sampler.tables(4)
    for i, prev in enumerate(deterministic):
        assert_golden(sampler.step(table_row(tables, i), x, eps, (), z)[0], *prev)


def test_pcm_four_phases_on_40_points_is_trailing_ddim():
    """§4.2's DDIM trailing rows (clip_sample=False, set_alpha_to_one=False): the 4-step PCM sampler on N = 40."""
    golden = [([-8.54206562, -14.23000240, -13.64133930, -6.27015018], -15.70429254),
              ([-4.54034805, -7.19568110, -6.85313034, -3.27105141], -7.50081638),
              ([-2.42100835, -3.60359430, -3.40213442, -1.70506799], -3.46293421),
              ([-1.29493678, -1.91569066, -1.80698502, -0.91002226], -1.82513468)]
    x, eps, z = golden_inputs()
    sampler = PCM(schedule=F32)
    tables = sampler.tables(4)
    for i, ref in enumerate(golden):
        assert_golden(sampler.step(table_row(tables, i), x, eps, (), z)[0], *ref)


def dirac_oracle(schedule, x_star, prediction_type="epsilon"):
    """model_fn(x, t): the exact prediction for data that is the single point x_star (consistency.md §4.3)."""
    acp = jnp.asarray(schedule.alphas_cumprod(), jnp.float32)

    def model_fn(x, t):
        a = acp[t.astype(jnp.int32)].reshape(-1, 1, 1, 1)
        eps = (x - jnp.sqrt(a) * x_star) / jnp.sqrt(1 - a)
        return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x_star if prediction_type == "v_prediction" else eps
    return model_fn


@pytest.mark.parametrize("sampler", [PCM(), PCM(prediction_type="v_prediction"), TCD(gamma=0.0),
                                     PCM(original_inference_steps=50, gamma=0.3)], ids=repr)
def test_deterministic_jumps_stay_on_the_oracle_trajectory(sampler):
    """Along x_t = √ᾱ_t x* + √(1-ᾱ_t) ε every DDIM jump is exact (γ = 0): the sampler ends at √ᾱ_0 x* + σ_0 ε with
    the initial ε. With γ > 0 and zero fresh noise the x* part is still exact (x̂_0 = x* at every step)."""
    x_star, eps0 = randn(11), randn(12)
    acp = sampler.schedule.alphas_cumprod()
    x_T = np.sqrt(acp[999]) * x_star + np.sqrt(1 - acp[999]) * eps0
    model_fn = dirac_oracle(sampler.schedule, x_star, sampler.prediction_type)
    out = jax.jit(lambda x: sampler.sample(model_fn, x, 4, noise=jnp.zeros((4, *SHAPE))))(x_T)
    residual = (np.asarray(out) - np.sqrt(acp[0]) * x_star) / eps0
    if sampler.gamma == 0:
        np.testing.assert_allclose(residual, np.sqrt(1 - acp[0]), atol=1e-3)
    else:
        assert np.ptp(residual) < 1e-3 and 0 < residual.mean() <= np.sqrt(1 - acp[0]) + 1e-4


@pytest.mark.parametrize("sampler", [SASolver(), SASolver(predictor_order=3, corrector_order=4),
                                     SASolver(prediction_type="v_prediction", timestep_spacing="trailing")],
                         ids=repr)
def test_sa_solver_keeps_the_data_part_of_the_oracle_trajectory(sampler):
    """Data prediction: the weights on x̂_0 sum to α_t (1 - e^{-(1+τ²)h}) (the Lagrange basis sums to 1), so with
    x̂_0 = x* at every step and no fresh noise the sample stays α_t x* + c_t ε_0: it ends at √ᾱ_0 x* + c ε_0."""
    x_star, eps0 = randn(13), randn(14)
    acp = sampler.schedule.alphas_cumprod()
    steps = 12
    t0 = sampler.timesteps(steps)[0]
    x_T = np.sqrt(acp[t0]) * x_star + np.sqrt(1 - acp[t0]) * eps0
    model_fn = dirac_oracle(sampler.schedule, x_star, sampler.prediction_type)
    out = jax.jit(lambda x: sampler.sample(model_fn, x, steps, noise=jnp.zeros((steps, *SHAPE))))(x_T)
    residual = (np.asarray(out, np.float64) - np.sqrt(acp[0]) * x_star) / eps0
    assert np.ptp(residual) < 1e-3 and 0 < residual.mean() < np.sqrt(1 - acp[0]) + 1e-4


def test_sa_solver_orders_and_stochastic_steps():
    """diffusers' warm-up (order grows by one per step) and lower_order_final; τ = 1 on timesteps in [200, 800]."""
    predictor, corrector = SASolver(predictor_order=3, corrector_order=4).orders(6)
    assert predictor.tolist() == [1, 2, 3, 3, 2, 1] and corrector.tolist() == [2, 3, 4, 4, 3, 2]
    sampler = SASolver()
    assert sampler.timesteps(5).tolist() == [999, 799, 599, 400, 200]
    assert sampler.taus(5).tolist() == [0, 1, 1, 1, 1] and sampler.needs_noise(5) and not sampler.needs_noise(1)


def test_pipeline_eta_is_tcd_gamma_and_ddim_eta():
    assert TCD().with_eta(0.0).gamma == 0.0 and PCM().with_eta(0.4).gamma == 0.4
    assert not PCM().needs_noise(4) and TCD().needs_noise(4) and not TCD().needs_noise(1)


def test_bad_consistency_sampler_options_are_rejected():
    with pytest.raises(ValueError, match=r"gamma \(eta\) must be in \[0, 1\]"):
        TCD(gamma=1.5)
    with pytest.raises(ValueError, match="distillation grid needs 1 to 1000 points"):
        PCM(original_inference_steps=0)
    with pytest.raises(ValueError, match=r"number of phases must be in \[1, 40\]"):
        PCM().timesteps(41)
    with pytest.raises(ValueError, match="at most original_inference_steps = 50"):
        TCD().timesteps(51)
    with pytest.raises(ValueError, match=r"predictor_order must be in \[1, 4\]"):
        SASolver(predictor_order=5)
    with pytest.raises(ValueError, match="algorithm_type must be one of"):
        SASolver(algorithm_type="sde")
