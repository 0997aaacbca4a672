"""Samplers against the spec: schedule values, timestep tables, step formulas (float64 NumPy re-derivations, golden
values of diffusers 0.42.1 from consistency.md §4.2), oracle properties, configs and bad input. No torch needed."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixart_jax.samplers import (
    DDIM,
    LCM,
    PCM,
    TCD,
    DDPMSchedule,
    DPMSolverMultistep,
    LearnedVarianceDDPM,
    SASolver,
    from_scheduler_config,
    make_sampler,
    table_row,
)
from pixart_jax.samplers.ddpm import respaced_timesteps
from pixart_jax.samplers.lcm import boundary_scalings
from tests.helpers.inputs import SHAPE, assert_golden, golden_inputs, randn
from tests.helpers.parity import rel_error

ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # spec §2.1, float64


# --- schedule -------------------------------------------------------------------------------------------------

def test_schedule_matches_spec_table():
    """consistency.md §0.1: ᾱ_t, √ᾱ_t, √(1-ᾱ_t) at reference timesteps (10 digits)."""
    table = {0: (0.9999000000, 0.9999499987, 0.0100000000), 19: (0.9942309517, 0.9971113036, 0.0759542515),
             249: (0.5240853738, 0.7239374102, 0.6898656581), 499: (0.0785872429, 0.2803341629, 0.9599024727),
             759: (0.0028767829, 0.0536356498, 0.9985605726), 999: (0.0000403583, 0.0063528181, 0.9999798206)}
    acp = DDPMSchedule().alphas_cumprod()
    for t, (abar, a, sigma) in table.items():
        np.testing.assert_allclose([acp[t], math.sqrt(acp[t]), math.sqrt(1 - acp[t])], [abar, a, sigma],
                                   rtol=1e-8, atol=1e-10)


def test_float32_schedule_is_diffusers_float32_alphas():
    """diffusers rounds 1-β to float32 (ᾱ_0 = 0.99989998…); elsewhere ᾱ stays within 3.6e-7 of float64."""
    acp32 = DDPMSchedule(dtype="float32").alphas_cumprod()
    assert acp32[0] == float(np.float32(1) - np.float32(1e-4))
    assert np.abs(acp32 / ABAR - 1).max() < 4e-7
    assert np.array_equal(acp32, acp32.astype(np.float32))


def test_scaled_linear_schedule():
    betas = DDPMSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").betas()
    np.testing.assert_allclose(betas[[0, -1]], [0.00085, 0.012])
    np.testing.assert_allclose(np.sqrt(betas), np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000))


# --- DDIM -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing,steps,expected", [
    ("leading", 4, [750, 500, 250, 0]),
    ("trailing", 4, [999, 749, 499, 249]),
    ("trailing", 16, [999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61]),  # §4.1
    ("linspace", 4, [999, 666, 333, 0]),
])
def test_ddim_timesteps(spacing, steps, expected):
    np.testing.assert_array_equal(DDIM(timestep_spacing=spacing).timesteps(steps), expected)


def test_ddim_leading_steps_offset():
    np.testing.assert_array_equal(DDIM(steps_offset=1).timesteps(4), [751, 501, 251, 1])


@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_formula(eta, clip):
    """DDIM eq. (12)/(16) in float64 with the 'previous' timestep t - T//steps (ᾱ = 1 below 0)."""
    sampler = DDIM(eta=eta, clip_sample=clip, timestep_spacing="linspace")
    steps = 7
    tables, ts = sampler.tables(steps), sampler.timesteps(steps)
    for i, t in enumerate(ts):
        x, eps, z = randn(3 * i), randn(3 * i + 1), randn(3 * i + 2)
        prev = t - 1000 // steps
        a, ap = ABAR[t], (ABAR[prev] if prev >= 0 else 1.0)
        raw_x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        x0 = np.clip(raw_x0, -1, 1) if clip else raw_x0
        std = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        expected = np.sqrt(ap) * x0 + np.sqrt(1 - ap - std ** 2) * eps + std * z
        out, pred_x0, _ = sampler.step(table_row(tables, i), jnp.asarray(x), jnp.asarray(eps), (), jnp.asarray(z))
        # float32 rounding of the unclipped x̂_0 (up to ~600 here) is what clipping can leave behind
        scale = max(np.abs(expected).max(), np.sqrt(ap) * np.abs(raw_x0).max())
        assert np.abs(np.asarray(out) - expected).max() < 5e-7 * scale
        assert rel_error(pred_x0, x0) < 5e-7 * np.abs(raw_x0).max() / np.abs(x0).max()


def test_oracle_noise_prediction_recovers_the_clean_sample():
    """With the true ε, every DDIM step stays on x_t = √ᾱ x0 + √(1-ᾱ) ε and the loop ends exactly at x0."""
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key0, SHAPE)
    eps = jax.random.normal(key1, x0.shape)
    a_T = ABAR[DDIM().timesteps(10)[0]]
    x_T = np.sqrt(a_T) * x0 + np.sqrt(1 - a_T) * eps
    out = jax.jit(lambda x: DDIM().sample(lambda x, t: eps, x, 10))(x_T)
    np.testing.assert_allclose(out, x0, atol=2e-4)


@pytest.mark.parametrize("sampler", [DDIM(prediction_type="v_prediction"),
                                     DPMSolverMultistep(prediction_type="v_prediction"),
                                     LCM(prediction_type="v_prediction"),
                                     SASolver(prediction_type="v_prediction", predictor_order=1, corrector_order=1)],
                         ids=lambda s: type(s).__name__)
def test_oracle_velocity_recovers_the_clean_sample(sampler):
    """A v-prediction model that returns the true v = √ᾱ ε - √(1-ᾱ) x0 of a single data point x0 (for the x it is
    given, ε = (x - √ᾱ x0) / √(1-ᾱ)) makes every sampler return x0."""
    x0 = randn(5)
    acp = sampler.schedule.alphas_cumprod()

    def velocity(x, t):
        a = jnp.asarray(acp, jnp.float32)[t.astype(jnp.int32)].reshape(-1, 1, 1, 1)
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

    out = jax.jit(lambda x: sampler.sample(velocity, x, 4, noise=jnp.zeros((4, *SHAPE))))(randn(6))
    np.testing.assert_allclose(out, x0, atol=2e-4)


# --- DPM-Solver++ ---------------------------------------------------------------------------------------------

def test_dpm_timesteps_both_conventions():
    """§2.5/§2.7: diffusers' integers 999, 949, …, 50; the repo's fractional 999.0, 949.05, 899.1, …, 49.95."""
    ours = DPMSolverMultistep().timesteps(20)
    np.testing.assert_array_equal(ours, np.round(np.linspace(0, 999, 21))[::-1][:-1])
    assert ours[:3].tolist() == [999, 949, 899] and ours[-1] == 50
    repo = DPMSolverMultistep(convention="repo").timesteps(20)
    np.testing.assert_allclose(repo, (np.linspace(1, 0.001, 21)[:-1] - 0.001) * 1000, atol=1e-9)
    np.testing.assert_allclose(repo[:3], [999.0, 949.05, 899.1], atol=1e-9)


@pytest.mark.parametrize("sampler,steps,first_order_steps", [
    (DPMSolverMultistep(), 20, [0, 19]),                                    # σ_final = 0: the last step is Euler
    (DPMSolverMultistep(), 8, [0, 7]),                                      # (the second-to-last stays 2nd order)
    (DPMSolverMultistep(final_sigmas_type="sigma_min"), 20, [0]),
    (DPMSolverMultistep(final_sigmas_type="sigma_min"), 14, [0, 13]),       # lower_order_final below 15 steps
    (DPMSolverMultistep(final_sigmas_type="sigma_min", lower_order_final=False), 8, [0]),
    (DPMSolverMultistep(final_sigmas_type="sigma_min", euler_at_final=True), 20, [0, 19]),
    (DPMSolverMultistep(convention="repo"), 20, [0]),
    (DPMSolverMultistep(convention="repo"), 9, [0, 8]),                     # the repo's threshold is 10 steps
    (DPMSolverMultistep(solver_order=1), 5, [0, 1, 2, 3, 4]),
])
def test_dpm_first_order_steps(sampler, steps, first_order_steps):
    assert np.flatnonzero(sampler.orders(steps) == 1).tolist() == first_order_steps


def dpm_grid_reference(convention, steps):
    """(α, σ) at the grid points from the spec: ᾱ at diffusers' timesteps plus σ = 0, or the repo's continuous
    log α(t) interpolated through (n+1)/1000 ↦ 0.5·Σ log(1-β) at t = linspace(1, 0.001, steps+1)."""
    if convention == "diffusers":
        abar = np.append(ABAR[np.round(np.linspace(0, 999, steps + 1))[::-1][:-1].astype(int)], 1.0)
        return np.sqrt(abar), np.sqrt(1 - abar)
    log_alpha = np.interp(np.linspace(1, 0.001, steps + 1), np.arange(1, 1001) / 1000,
                          0.5 * np.cumsum(np.log(1 - np.linspace(1e-4, 0.02, 1000))))
    return np.exp(log_alpha), np.sqrt(1 - np.exp(2 * log_alpha))


@pytest.mark.parametrize("convention", ["diffusers", "repo"])
@pytest.mark.parametrize("steps", [2, 5, 9, 20, 25])
def test_dpm_steps_match_float64_formulas(convention, steps):
    """Each step (fed the same inputs) against the DPM-Solver++ updates of §2.5 evaluated in float64."""
    sampler = DPMSolverMultistep(convention=convention)
    tables, orders = sampler.tables(steps), sampler.orders(steps)
    alpha, sigma = dpm_grid_reference(convention, steps)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    x, prev_x0 = randn(0), np.zeros(SHAPE)
    for i in range(steps):
        eps = randn(i + 1)
        x0 = (x.astype(np.float64) - sigma[i] * eps) / alpha[i]
        h = lam[i + 1] - lam[i]
        expected = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * x0
        if orders[i] == 2:
            r = (lam[i] - lam[i - 1]) / h
            expected -= 0.5 * alpha[i + 1] * np.expm1(-h) * (x0 - prev_x0) / r
        out, _, _ = sampler.step(table_row(tables, i), jnp.asarray(x), jnp.asarray(eps),
                                 jnp.asarray(prev_x0, jnp.float32))
        assert rel_error(out, expected) < 5e-7, i
        x, prev_x0 = np.asarray(out), x0


@pytest.mark.parametrize("convention", ["diffusers", "repo"])
def test_dpm_oracle_for_a_single_data_point_is_exact(convention):
    """For data concentrated at x*, the true ε makes x̂_0 ≡ x*, where DPM-Solver++ is exact at any order: the
    loop ends at α_end·x* + σ_end·ε_0 (x* itself when the last σ is 0)."""
    sampler = DPMSolverMultistep(convention=convention)
    x_star, eps0 = randn(1), randn(2)
    alpha, sigma = dpm_grid_reference(convention, 10)
    tables = sampler.tables(10)
    x = jnp.asarray(alpha[0] * x_star + sigma[0] * eps0)
    state = sampler.init_state(x)
    for i in range(10):
        eps = (x - alpha[i] * x_star) / sigma[i]  # the exact ε-prediction for this data
        x, _, state = sampler.step(table_row(tables, i), x, eps, state)
    assert rel_error(x, alpha[-1] * x_star + sigma[-1] * eps0) < 2e-6


def test_dpm_repo_needs_two_steps():
    with pytest.raises(ValueError, match="steps >= solver_order"):
        DPMSolverMultistep(convention="repo").timesteps(1)


# --- LCM ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,diffusers,repo", [   # consistency.md §1.10
    (1, [999], [999]), (2, [999, 499], [999, 499]),
    (3, [999, 679, 339], [999, 679, 359]), (4, [999, 759, 499, 259], [999, 759, 519, 279]),
    (6, [999, 839, 679, 499, 339, 179], [999, 839, 679, 519, 359, 199]),
    (8, [999, 879, 759, 639, 499, 379, 259, 139], [999, 879, 759, 639, 519, 399, 279, 159]),
])
def test_lcm_timesteps_both_conventions(steps, diffusers, repo):
    assert LCM().timesteps(steps).tolist() == diffusers
    assert LCM(convention="repo").timesteps(steps).tolist() == repo


def test_lcm_boundary_scalings_match_spec_table():
    """consistency.md §1.5."""
    c_skip, c_out = boundary_scalings([0, 1, 19, 39, 259, 999])
    np.testing.assert_allclose(c_skip, [1, 2.4937656e-3, 6.9251598e-6, 1.6436528e-6, 3.7268376e-8, 2.5050075e-9],
                               rtol=1e-7)
    np.testing.assert_allclose(c_out, [0, 0.9987523389, 0.9999965374, 0.9999991782, 0.9999999814, 0.9999999987],
                               rtol=1e-9)


def test_lcm_steps_match_diffusers_golden_values():
    """Independent LCMScheduler.step calls (K = 4) on the same (x, ε̂), from diffusers 0.42.1 in float32."""
    golden = [  # (denoised first 4, sum), (prev_sample first 4, sum)
        (([-147.57229614, -260.34963989, -251.34971619, -110.75669098], -304.69132614),
         ([-6.91657543, -13.42449665, -13.89685249, -6.92907429], -15.62801731)),
        (([-17.47904587, -30.81457520, -29.74679184, -13.11472702], -36.03761959),
         ([-3.94007087, -8.11973953, -8.73850250, -4.62680197], -9.41593045)),
        (([-3.34422326, -5.77963829, -5.56598902, -2.48974824], -6.62805766),
         ([-1.65028131, -3.69409585, -4.22130728, -2.45801067], -4.16852865)),
        (([-1.32900023, -1.99729669, -1.88824773, -0.93919528], -1.94494746),) * 2,
    ]
    x, eps, z = golden_inputs()
    sampler = LCM(schedule=DDPMSchedule(dtype="float32"))
    tables = sampler.tables(4)
    for i, (denoised_ref, prev_ref) in enumerate(golden):
        prev, denoised, _ = sampler.step(table_row(tables, i), x, eps, (), z if i < 3 else None)
        assert_golden(denoised, *denoised_ref)
        assert_golden(prev, *prev_ref)


def test_ddim_steps_match_diffusers_golden_values():
    """DDIMScheduler trailing, K = 4, clip_sample=False, set_alpha_to_one=False (the last step lands on ᾱ_0)."""
    golden = [([-8.54206562, -14.23000240, -13.64133930, -6.27015018], -15.70429254),
              ([-4.54034805, -7.19568110, -6.85313034, -3.27105141], -7.50081638),
              ([-2.42100835, -3.60359430, -3.40213442, -1.70506799], -3.46293421),
              ([-1.29493678, -1.91569066, -1.80698502, -0.91002226], -1.82513468)]
    x, eps, _ = golden_inputs()
    sampler = DDIM(schedule=DDPMSchedule(dtype="float32"), timestep_spacing="trailing", set_alpha_to_one=False)
    tables = sampler.tables(4)
    for i, ref in enumerate(golden):
        assert_golden(sampler.step(table_row(tables, i), x, eps)[0], *ref)


def test_lcm_one_step_is_the_x0_prediction():
    """consistency.md §4.3: one LCM step returns c_out(999)·x̂_0 + c_skip(999)·x, without noise."""
    x, eps = jnp.asarray(randn(0)), jnp.asarray(randn(1))
    out = jax.jit(lambda x: LCM().sample(lambda x, t: eps, x, 1))(x)
    c_skip, c_out = boundary_scalings([999])
    x0 = (np.asarray(x, np.float64) - np.sqrt(1 - ABAR[999]) * np.asarray(eps)) / np.sqrt(ABAR[999])
    assert rel_error(out, c_out[0] * x0 + c_skip[0] * np.asarray(x)) < 5e-7


# --- ancestral DDPM with the learned variance -----------------------------------------------------------------

def test_respaced_timesteps():
    """§2.3: 100 steps keep 0, 10, 20, …, 999 (stride 999/99 accumulated, rounded half to even)."""
    kept = respaced_timesteps(100, 1000)
    assert kept[:6].tolist() == [0, 10, 20, 30, 40, 50] and kept[-1] == 999 and len(set(kept)) == 100
    np.testing.assert_array_equal(kept, [round(i * 999 / 99) for i in range(100)])
    assert respaced_timesteps(1, 1000).tolist() == [0]
    assert LearnedVarianceDDPM().timesteps(4).tolist() == [999, 666, 333, 0]


def iddpm_reference_step(steps, i, x, output, noise):
    """Step i of the IDDPM sampler of spec §2.2-2.4 in float64 NumPy: respaced β', posterior, learned range."""
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += 999 / (steps - 1)
    abar = ABAR[kept]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1 - abar / abar_prev
    posterior_var = beta * (1 - abar_prev) / (1 - abar)
    log_var_clipped = np.log(np.concatenate([[posterior_var[1]], posterior_var[1:]]))
    j = steps - 1 - i
    x = x.astype(np.float64)
    eps, v = np.split(output.astype(np.float64), 2, axis=1)
    x0 = np.sqrt(1 / abar[j]) * x - np.sqrt(1 / abar[j] - 1) * eps
    mean = (beta[j] * np.sqrt(abar_prev[j]) / (1 - abar[j]) * x0
            + (1 - abar_prev[j]) * np.sqrt(1 - beta[j]) / (1 - abar[j]) * x)
    frac = (v + 1) / 2
    log_var = frac * np.log(beta[j]) + (1 - frac) * log_var_clipped[j]
    return mean + (j > 0) * np.exp(0.5 * log_var) * noise


@pytest.mark.parametrize("steps", [2, 5, 21, 100])
def test_learned_variance_ddpm_matches_float64_formulas(steps):
    """Every step (fed the reference's previous output) against the float64 formulas; ε̂ and v ∈ [-1, 1]."""
    sampler = LearnedVarianceDDPM()
    tables = sampler.tables(steps)
    x = randn(7)
    for i in range(steps):
        output = np.concatenate([randn(2 * i), np.tanh(randn(2 * i + 1))], axis=1)
        noise = randn(1000 + i)
        expected = iddpm_reference_step(steps, i, x, output, noise)
        ours, _, _ = sampler.step(table_row(tables, i), jnp.asarray(x), jnp.asarray(output), (), jnp.asarray(noise))
        assert rel_error(ours, expected) < 5e-7, i
        x = expected.astype(np.float32)


# --- configs and bad input ------------------------------------------------------------------------------------

PIXART_DPM_CONFIG = {  # the fields of PixArt's hub scheduler config (diffusers defaults)
    "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "dynamic_thresholding_ratio": 0.995, "euler_at_final": False,
    "lambda_min_clipped": -float("inf"), "lower_order_final": True, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "solver_order": 2, "solver_type": "midpoint",
    "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace", "trained_betas": None,
    "use_karras_sigmas": False, "use_lu_lambdas": False, "variance_type": None}


def test_from_scheduler_config_reads_files_and_folders(tmp_path):
    (tmp_path / "scheduler").mkdir()
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(PIXART_DPM_CONFIG))  # writes -Infinity, as diffusers does
    for where in (path, tmp_path / "scheduler", tmp_path, PIXART_DPM_CONFIG):
        sampler = from_scheduler_config(where)
        assert isinstance(sampler, DPMSolverMultistep) and sampler.timestep_spacing == "linspace"
        assert sampler.schedule == DDPMSchedule(dtype="float32")
    with pytest.raises(ValueError, match="no scheduler config"):
        from_scheduler_config(tmp_path / "missing")


def test_from_scheduler_config_classes_defaults_and_overrides():
    ddim = from_scheduler_config(PIXART_DPM_CONFIG, sampler="ddim", eta=0.3)  # as DDIMScheduler.from_config
    assert (ddim.timestep_spacing, ddim.clip_sample, ddim.set_alpha_to_one, ddim.eta) == ("linspace", True, True, 0.3)
    lcm = from_scheduler_config({"_class_name": "LCMScheduler"})  # diffusers' LCM defaults: scaled-linear SD betas
    assert lcm.schedule.beta_schedule == "scaled_linear" and lcm.original_inference_steps == 50
    lcm = from_scheduler_config({"_class_name": "LCMScheduler", "beta_schedule": "linear", "beta_start": 1e-4,
                                 "beta_end": 0.02, "original_inference_steps": 25}, convention="repo")
    assert (lcm.schedule.beta_schedule, lcm.original_inference_steps, lcm.convention) == ("linear", 25, "repo")
    assert isinstance(from_scheduler_config({"_class_name": "DDIMScheduler"}), DDIM)
    assert isinstance(make_sampler("ddpm"), LearnedVarianceDDPM)


@pytest.mark.parametrize("config,message", [
    ({"_class_name": "EulerDiscreteScheduler"}, "unsupported scheduler class 'EulerDiscreteScheduler'"),
    ({}, "unsupported scheduler class None"),
    (dict(PIXART_DPM_CONFIG, prediction_type="sample"), "prediction_type must be one of"),
    ({"_class_name": "DDIMScheduler", "prediction_type": "sample"}, "prediction_type must be one of"),
    (dict(PIXART_DPM_CONFIG, use_karras_sigmas=True), "use_karras_sigmas=True is not supported"),
    (dict(PIXART_DPM_CONFIG, algorithm_type="sde-dpmsolver++"), "algorithm_type='sde-dpmsolver\\+\\+'"),
    (dict(PIXART_DPM_CONFIG, solver_order=3), "order 3 is not implemented"),
    (dict(PIXART_DPM_CONFIG, timestep_spacing="karras"), "timestep_spacing must be one of"),
    ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding=True is not supported"),
    ({"_class_name": "LCMScheduler", "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule must be one of"),
])
def test_from_scheduler_config_rejects_what_we_do_not_implement(config, message):
    with pytest.raises(ValueError, match=message):
        from_scheduler_config(config)


def test_ddpm_sampler_reads_only_epsilon_configs():
    with pytest.raises(ValueError, match="prediction_type='v_prediction' is not supported"):
        from_scheduler_config(dict(PIXART_DPM_CONFIG, prediction_type="v_prediction"), sampler="ddpm")
    assert from_scheduler_config(dict(PIXART_DPM_CONFIG, prediction_type="v_prediction")).prediction_type == \
        "v_prediction"


def test_make_sampler_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"sampler must be one of \['dpm', .*got 'euler'"):
        make_sampler("euler")
    with pytest.raises(ValueError, match=r"sampler must be one of \['dpm', .*got 'euler'"):
        from_scheduler_config(PIXART_DPM_CONFIG, sampler="euler")


@pytest.mark.parametrize("sampler", [DDIM(), DPMSolverMultistep(), LCM(), LearnedVarianceDDPM(), TCD(), PCM(),
                                     SASolver()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("steps", [0, -3, 2.5, True, None])
def test_non_positive_or_non_integer_steps_are_rejected(sampler, steps):
    with pytest.raises(ValueError, match="number of steps must be a positive integer"):
        sampler.timesteps(steps)
    with pytest.raises(ValueError, match="number of steps must be a positive integer"):
        sampler.sample(lambda x, t: x, jnp.zeros(SHAPE), steps)


def test_bad_sampler_options_are_rejected():
    with pytest.raises(ValueError, match="eta must be in"):
        DDIM(eta=1.5)
    with pytest.raises(ValueError, match="convention must be one of"):
        LCM(convention="original")
    with pytest.raises(ValueError, match="at most original_inference_steps = 50"):
        LCM().timesteps(51)
    with pytest.raises(ValueError, match="exceeds num_train_timesteps"):
        DDIM().timesteps(1001)
    with pytest.raises(ValueError, match="dtype must be one of"):
        DDPMSchedule(dtype="bfloat16")


def test_sample_input_errors():
    x = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="injects fresh noise with 4 steps: pass key= or noise="):
        LCM().sample(lambda x, t: x, x, 4)
    with pytest.raises(ValueError, match="injects fresh noise"):
        DDIM(eta=0.5).sample(lambda x, t: x, x, 4)
    with pytest.raises(ValueError, match="either key or noise"):
        LCM().sample(lambda x, t: x, x, 4, key=jax.random.key(0), noise=jnp.zeros((4, *SHAPE)))
    with pytest.raises(ValueError, match=r"noise must have shape \(steps, \*x_T.shape\)"):
        LCM().sample(lambda x, t: x, x, 4, noise=jnp.zeros(SHAPE))
    eight_channels = lambda x, t: jnp.concatenate([x, x], axis=1)  # noqa: E731 — forgot to drop the variance
    with pytest.raises(ValueError, match=r"returned shape \(2, 8, 8, 8\), expected \(2, 4, 8, 8\)"):
        DPMSolverMultistep().sample(eight_channels, x, 4)
    with pytest.raises(ValueError, match=r"expected \(2, 8, 8, 8\)"):
        LearnedVarianceDDPM().sample(lambda x, t: x, x, 4, key=jax.random.key(0))
