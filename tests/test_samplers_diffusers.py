"""Scheduler parity with diffusers 0.42.1: DPMSolverMultistepScheduler, DDIMScheduler and LCMScheduler configured as
for PixArt (and a few variants, v-prediction included), saved with `save_config` and read back by
`from_scheduler_config`. For 1…25 steps: the timesteps exactly, and every step's output for random model outputs
(and the same injected noise).

"Per step" feeds both sides the same input sample (and, for DPM-Solver, diffusers' stored previous x̂_0): that is
`scheduler.step` parity, bounded by 1e-6. "Chained" runs each side on its own outputs, so float32 rounding of both
accumulates over the steps; it is bounded by 2e-6. Against float64 formulas our steps are within 5e-7
(test_samplers.py); diffusers' float32 coefficient arithmetic is the larger part of what remains.
"""
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_lcm  # noqa: E402

from pixart_jax.samplers import DDIM, LCM, DPMSolverMultistep, from_scheduler_config, table_row  # noqa: E402
from tests.parity import rel_error  # noqa: E402

# diffusers' set_timesteps calls np.array on a torch tensor the NumPy 2 way it warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SHAPE = (2, 4, 8, 8)
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
}
EXPECTED_SAMPLER = {"dpm": DPMSolverMultistep, "ddim": DDIM, "lcm": LCM}


def round_trip(name, tmp_path, **options):
    """The diffusers scheduler and ours read from the scheduler_config.json it saves."""
    reference = REFERENCES[name]()
    reference.save_config(tmp_path)
    ours = from_scheduler_config(tmp_path, **options)
    assert isinstance(ours, EXPECTED_SAMPLER[name.split("_")[0]])
    return reference, ours


def random_steps(seed, steps):
    """x_T, then per step: model output, injected noise (float32, NumPy)."""
    rng = np.random.default_rng(seed)
    draw = lambda: rng.standard_normal(SHAPE).astype(np.float32)  # noqa: E731
    return draw(), [(draw(), draw()) for _ in range(steps)]


def compare(name, tmp_path, monkeypatch, eta=0.0):
    """Runs both schedulers over 1…25 steps; returns the worst per-step and chained relative errors."""
    per_step, chained = 0.0, 0.0
    for steps in STEPS:
        reference, ours = round_trip(name, tmp_path, **({"eta": eta} if name.startswith("ddim") else {}))
        reference.set_timesteps(steps)
        np.testing.assert_array_equal(reference.timesteps.numpy(), ours.timesteps(steps), err_msg=f"{steps} steps")
        if hasattr(reference, "set_begin_index"):
            reference.set_begin_index(0)
        tables = ours.tables(steps)
        x_T, draws = random_steps(steps, steps)
        x_ref, x_ours, state = torch.from_numpy(x_T), jnp.asarray(x_T), ours.init_state(jnp.asarray(x_T))
        for i, (t, (eps, noise)) in enumerate(zip(reference.timesteps, draws)):
            x_in = jnp.asarray(x_ref.numpy())
            if name.startswith("dpm"):
                previous = reference.model_outputs[-1]
                ref_state = jnp.zeros(SHAPE) if previous is None else jnp.asarray(previous.numpy())
                out = reference.step(torch.from_numpy(eps), t, x_ref)
                ref_denoised = reference.model_outputs[-1]
            elif name.startswith("ddim"):
                ref_state = ()
                out = reference.step(torch.from_numpy(eps), t, x_ref, eta=eta,
                                     variance_noise=torch.from_numpy(noise) if eta > 0 else None)
                ref_denoised = out.pred_original_sample
            else:
                ref_state = ()
                monkeypatch.setattr(scheduling_lcm, "randn_tensor", lambda *a, z=noise, **k: torch.from_numpy(z))
                out = reference.step(torch.from_numpy(eps), t, x_ref)
                ref_denoised = out.denoised
            x_ref = out.prev_sample
            row = table_row(tables, i)
            one, denoised, _ = ours.step(row, x_in, jnp.asarray(eps), ref_state, jnp.asarray(noise))
            x_ours, _, state = ours.step(row, x_ours, jnp.asarray(eps), state, jnp.asarray(noise))
            # x̂_0 is compared at the scale it has before any clipping: float32 cancellation in (x - σε)/α at
            # t ≈ 999 (x̂_0 up to ~600 here) survives clipping to ±1 on both sides
            unclipped = dataclasses.replace(ours, clip_sample=False) if hasattr(ours, "clip_sample") else ours
            scale = np.abs(np.asarray(unclipped.step(row, x_in, jnp.asarray(eps), ref_state)[1])).max()
            per_step = max(per_step, rel_error(one, x_ref.numpy()),
                           np.abs(np.asarray(denoised) - ref_denoised.numpy()).max() / scale)
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


def test_pixart_dpm_config_round_trip_is_the_default_sampler(tmp_path):
    """PixArt's scheduler config gives DPMSolverMultistep's defaults (on diffusers' float32 schedule)."""
    _, ours = round_trip("dpm_pixart", tmp_path)
    assert ours == DPMSolverMultistep(schedule=ours.schedule) and ours.schedule.dtype == "float32"
