"""Scheduler parity with diffusers 0.42.1: DPMSolverMultistepScheduler, DDIMScheduler, LCMScheduler, TCDScheduler
(and our PCM sampler read from a TCDScheduler config) and SASolverScheduler configured as for PixArt (and a few
variants, v-prediction included), saved with `save_config` and read back by `from_scheduler_config`. For 1…25 steps:
the timesteps exactly, and every step's output for random model outputs (and the same injected noise).

"Per step" feeds both sides the same input sample (and the scheduler's stored state: DPM-Solver's previous x̂_0,
SA-Solver's earlier model values, corrected sample and noise): that is `scheduler.step` parity, bounded by 1e-6.
"Chained" runs each side on its own outputs, so float32 rounding of both accumulates over the steps; it is bounded
by 2e-6. Against float64 formulas our steps are within 5e-7 (test_samplers.py); diffusers' float32 coefficient
arithmetic is the larger part of what remains. SA-Solver's coefficients (integrals of Lagrange polynomials times
exponentials, expanded in powers of λ) lose more than that to float32 cancellation inside diffusers (1.3e-6 at
orders 2/2 with 25 steps, 7e-5 at orders 3/4): its parity is measured against diffusers' own step run in float64,
and its float32 difference is shown to be diffusers' rounding.
"""
import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    SASolverScheduler,
    TCDScheduler,
)
from diffusers.schedulers import scheduling_lcm, scheduling_sasolver, scheduling_tcd  # noqa: E402

from pixart_jax.samplers import (  # noqa: E402
    DDIM,
    LCM,
    PCM,
    TCD,
    DPMSolverMultistep,
    SASolver,
    from_scheduler_config,
    table_row,
)
from tests.helpers.inputs import SHAPE  # noqa: E402
from tests.helpers.parity import rel_error  # noqa: E402

# diffusers' set_timesteps calls np.array on a torch tensor the NumPy 2 way it warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
STEPS = range(1, 26)
PIXART_LCM = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
REFERENCES = {
    "dpm_pixart": lambda: DPMSolverMultistepScheduler(),  # PixArt's hub scheduler: the library defaults
    "dpm_sigma_min": lambda: DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"),
    "dpm_heun": lambda: DPMSolverMultistepScheduler(solver_type="heun"),
    "dpm_trailing": lambda: DPMSolverMultistepScheduler(timestep_spacing="trailing"),
    "dpm_leading_offset": lambda: DPMSolverMultistepScheduler(timestep_spacing="leading", steps_offset=1),
    "ddim_from_pixart": lambda: DDIMScheduler.from_config(DPMSolverMultistepScheduler().config),  # linspace, clip
    "ddim_leading": lambda: DDIMScheduler(clip_sample=False),
    "ddim_trailing": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"),
    "lcm_pixart": lambda: LCMScheduler(**PIXART_LCM),
    "lcm_sd_defaults": lambda: LCMScheduler(),
    "dpm_v_prediction": lambda: DPMSolverMultistepScheduler(prediction_type="v_prediction"),
    "ddim_v_prediction": lambda: DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
    "lcm_v_prediction": lambda: LCMScheduler(**PIXART_LCM, prediction_type="v_prediction"),
    "tcd_pixart": lambda: TCDScheduler(**PIXART_LCM),
    "tcd_sd_defaults": lambda: TCDScheduler(),
    "tcd_v_prediction": lambda: TCDScheduler(**PIXART_LCM, prediction_type="v_prediction"),
    "tcd_40_points": lambda: TCDScheduler(**PIXART_LCM, original_inference_steps=40),  # what a PCM export writes
    "sa_pixart": lambda: SASolverScheduler(),  # PixArt's schedule is the class default
    "sa_orders_3_4": lambda: SASolverScheduler(predictor_order=3, corrector_order=4),
    "sa_orders_1_1": lambda: SASolverScheduler(predictor_order=1, corrector_order=1),
    "sa_noise_prediction": lambda: SASolverScheduler(algorithm_type="noise_prediction", predictor_order=4,
                                                     corrector_order=3),
    "sa_trailing": lambda: SASolverScheduler(timestep_spacing="trailing"),
    "sa_v_prediction": lambda: SASolverScheduler(prediction_type="v_prediction"),
}
EXPECTED_SAMPLER = {"dpm": DPMSolverMultistep, "ddim": DDIM, "lcm": LCM, "tcd": TCD, "pcm": PCM, "sa": SASolver}


def round_trip(name, tmp_path, sampler=None):
    """The diffusers scheduler and ours read from the scheduler_config.json it saves (as `sampler`, if given)."""
    reference = REFERENCES[name]()
    reference.save_config(tmp_path)
    ours = from_scheduler_config(tmp_path, sampler)
    assert isinstance(ours, EXPECTED_SAMPLER[sampler or name.split("_")[0]])
    return reference, ours


def random_steps(seed, steps):
    """x_T, then per step: model output, injected noise (float32, NumPy)."""
    rng = np.random.default_rng(seed)
    draw = lambda: rng.standard_normal(SHAPE).astype(np.float32)  # noqa: E731
    return draw(), [(draw(), draw()) for _ in range(steps)]


def _as_jax(tensor, shape=SHAPE):
    return jnp.zeros(shape) if tensor is None else jnp.asarray(tensor.numpy())


def reference_state(reference, ours):
    """The state our step needs to continue from where the diffusers scheduler is (its stored model values)."""
    if isinstance(reference, DPMSolverMultistepScheduler):
        return _as_jax(reference.model_outputs[-1])
    if isinstance(reference, SASolverScheduler):
        earlier = reference.model_outputs[::-1][:ours.window - 1]  # [m_{i-1}, m_{i-2}, ...]
        history = jnp.stack([_as_jax(m) for m in earlier]) if earlier else jnp.zeros((0, *SHAPE))
        return history, _as_jax(reference.last_sample), _as_jax(getattr(reference, "last_noise", None))
    return ()


def reference_step(reference, eps, t, x, noise, eta, monkeypatch):
    """(next sample, the estimate our step's second output is) of one diffusers step with injected noise."""
    inject = lambda *a, **k: torch.from_numpy(noise).to(x.dtype)  # noqa: E731
    if isinstance(reference, DDIMScheduler):
        out = reference.step(eps, t, x, eta=eta, variance_noise=torch.from_numpy(noise) if eta > 0 else None)
        return out.prev_sample, out.pred_original_sample
    if isinstance(reference, LCMScheduler):
        monkeypatch.setattr(scheduling_lcm, "randn_tensor", inject)
        out = reference.step(eps, t, x)
        return out.prev_sample, out.denoised
    if isinstance(reference, TCDScheduler):
        monkeypatch.setattr(scheduling_tcd, "randn_tensor", inject)
        out = reference.step(eps, t, x, eta=eta)
        return out.prev_sample, out.pred_noised_sample
    if isinstance(reference, SASolverScheduler):
        monkeypatch.setattr(scheduling_sasolver, "randn_tensor", inject)
        out = reference.step(eps, t, x)
        return out.prev_sample, None
    out = reference.step(eps, t, x)
    return out.prev_sample, reference.model_outputs[-1]


def compare(name, tmp_path, monkeypatch, eta=0.0, sampler=None, float64_reference=False, steps_list=STEPS):
    """Runs both schedulers over `steps_list` (1…25 steps); returns the worst per-step and chained relative
    errors.

    `sampler` reads the saved config as that sampler (default: its class's); `float64_reference` runs diffusers'
    step in float64 (its per-step sigmas promoted, float64 inputs): the same arithmetic without float32 rounding."""
    per_step, chained = 0.0, 0.0
    dtype = np.float64 if float64_reference else np.float32
    for steps in steps_list:
        reference, ours = round_trip(name, tmp_path, sampler)
        ours = ours.with_eta(eta)
        reference.set_timesteps(steps)
        np.testing.assert_array_equal(reference.timesteps.numpy(), ours.timesteps(steps), err_msg=f"{steps} steps")
        if hasattr(reference, "set_begin_index"):
            reference.set_begin_index(0)
        if float64_reference:
            reference.sigmas = reference.sigmas.double()
        tables = ours.tables(steps)
        x_T, draws = random_steps(steps, steps)
        x_ref, x_ours, state = torch.from_numpy(x_T.astype(dtype)), jnp.asarray(x_T), ours.init_state(jnp.asarray(x_T))
        for i, (t, (eps, noise)) in enumerate(zip(reference.timesteps, draws)):
            x_in, ref_state = jnp.asarray(x_ref.numpy()), reference_state(reference, ours)
            x_ref, ref_estimate = reference_step(reference, torch.from_numpy(eps.astype(dtype)), t, x_ref,
                                                 noise.astype(dtype), eta, monkeypatch)
            row = table_row(tables, i)
            one, estimate, _ = ours.step(row, x_in, jnp.asarray(eps), ref_state, jnp.asarray(noise))
            x_ours, _, state = ours.step(row, x_ours, jnp.asarray(eps), state, jnp.asarray(noise))
            per_step = max(per_step, rel_error(one, x_ref.numpy()))
            if ref_estimate is not None:
                # x̂_0 is compared at the scale it has before any clipping: float32 cancellation in (x - σε)/α at
                # t ≈ 999 (x̂_0 up to ~600 here) survives clipping to ±1 on both sides
                unclipped = dataclasses.replace(ours, clip_sample=False) if hasattr(ours, "clip_sample") else ours
                scale = np.abs(np.asarray(unclipped.step(row, x_in, jnp.asarray(eps), ref_state)[1])).max()
                per_step = max(per_step, np.abs(np.asarray(estimate) - ref_estimate.numpy()).max() / scale)
            chained = max(chained, rel_error(x_ours, x_ref.numpy()))
    return per_step, chained


@pytest.mark.parametrize("name", [name for name in REFERENCES if name.startswith("dpm")])
def test_dpm_solver_matches_diffusers(name, tmp_path, monkeypatch):
    per_step, chained = compare(name, tmp_path, monkeypatch)
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("name", [name for name in REFERENCES if name.startswith("ddim")])
def test_ddim_matches_diffusers(name, eta, tmp_path, monkeypatch):
    per_step, chained = compare(name, tmp_path, monkeypatch, eta)
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


@pytest.mark.parametrize("name", [name for name in REFERENCES if name.startswith("lcm")])
def test_lcm_matches_diffusers_with_the_same_noise(name, tmp_path, monkeypatch):
    per_step, chained = compare(name, tmp_path, monkeypatch)
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("name", [name for name in REFERENCES if name.startswith("tcd")])
def test_tcd_matches_diffusers_with_the_same_noise(name, eta, tmp_path, monkeypatch):
    per_step, chained = compare(name, tmp_path, monkeypatch, eta)
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_pcm_is_tcd_on_a_40_point_grid_for_1_2_4_8_steps(eta, tmp_path, monkeypatch):
    """The PCM sampler (phase edges) read from the TCDScheduler config a PCM export writes samples what diffusers'
    TCDScheduler does where the edges are its timesteps: M ∈ {1, 2, 4, 8} on N = 40."""
    per_step, chained = compare("tcd_40_points", tmp_path, monkeypatch, eta, sampler="pcm", steps_list=(1, 2, 4, 8))
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


@pytest.mark.parametrize("name", [name for name in REFERENCES if name.startswith("sa")])
def test_sa_solver_matches_diffusers_run_in_float64(name, tmp_path, monkeypatch):
    per_step, chained = compare(name, tmp_path, monkeypatch, float64_reference=True)
    assert per_step <= 1e-6 and chained <= 2e-6, (per_step, chained)


def float32_copy(reference):
    """The scheduler as diffusers runs it, in float32, in the state `reference` (run in float64) is in."""
    copied = copy.deepcopy(reference)
    copied.sigmas = copied.sigmas.float()
    copied.model_outputs = [None if m is None else m.float() for m in copied.model_outputs]
    for name in ("last_sample", "last_noise"):
        if getattr(copied, name, None) is not None:
            setattr(copied, name, getattr(copied, name).float())
    return copied


@pytest.mark.parametrize("name", ["sa_pixart", "sa_orders_3_4", "sa_noise_prediction"])
def test_sa_solver_differs_from_diffusers_float32_by_its_rounding(name, tmp_path, monkeypatch):
    """In lock-step from the float64 run's states: every step of ours is within 1e-6 of diffusers' float64 step,
    and within 1e-6 plus diffusers' own float32-vs-float64 difference of its float32 step."""
    reference, ours = round_trip(name, tmp_path)
    steps, worst = 25, {"float64": 0.0, "float32 - rounding": 0.0, "rounding": 0.0}
    reference.set_timesteps(steps)
    reference.set_begin_index(0)
    reference.sigmas = reference.sigmas.double()
    tables = ours.tables(steps)
    x_T, draws = random_steps(steps, steps)
    x = torch.from_numpy(x_T).double()
    for i, (t, (eps, noise)) in enumerate(zip(reference.timesteps, draws)):
        x_in, state, single = jnp.asarray(x.numpy()), reference_state(reference, ours), float32_copy(reference)
        x32, _ = reference_step(single, torch.from_numpy(eps), t, x.float(), noise, 0.0, monkeypatch)
        x, _ = reference_step(reference, torch.from_numpy(eps).double(), t, x, noise.astype(np.float64), 0.0,
                              monkeypatch)
        one = ours.step(table_row(tables, i), x_in, jnp.asarray(eps), state, jnp.asarray(noise))[0]
        rounding = rel_error(x32.numpy(), x.numpy())
        worst["float64"] = max(worst["float64"], rel_error(one, x.numpy()))
        worst["float32 - rounding"] = max(worst["float32 - rounding"], rel_error(one, x32.numpy()) - rounding)
        worst["rounding"] = max(worst["rounding"], rounding)
    print(f"{name}: ours vs diffusers float64 {worst['float64']:.2e}; diffusers float32 vs float64 up to "
          f"{worst['rounding']:.2e}")
    assert worst["float64"] <= 1e-6 and worst["float32 - rounding"] <= 1e-6, worst


def test_pixart_dpm_config_round_trip_is_the_default_sampler(tmp_path):
    """PixArt's scheduler config gives DPMSolverMultistep's defaults (on diffusers' float32 schedule)."""
    _, ours = round_trip("dpm_pixart", tmp_path)
    assert ours == DPMSolverMultistep(schedule=ours.schedule) and ours.schedule.dtype == "float32"
