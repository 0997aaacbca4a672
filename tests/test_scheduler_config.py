"""`to_scheduler_config` is the inverse of `from_scheduler_config`, and what it writes loads in diffusers."""
import json

import pytest

from pixart_jax.samplers import (
    DDIM,
    LCM,
    DPMSolverMultistep,
    LearnedVarianceDDPM,
    from_scheduler_config,
    save_scheduler_config,
    to_scheduler_config,
)
from pixart_jax.samplers.schedule import DDPMSchedule

FLOAT32_PIXART = DDPMSchedule(dtype="float32")
SAMPLERS = [
    DPMSolverMultistep(schedule=FLOAT32_PIXART),
    DPMSolverMultistep(schedule=FLOAT32_PIXART, solver_order=1, final_sigmas_type="sigma_min",
                       timestep_spacing="trailing", prediction_type="v_prediction"),
    DDIM(schedule=FLOAT32_PIXART, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=True),
    LCM(schedule=FLOAT32_PIXART, original_inference_steps=40, prediction_type="v_prediction"),
    LCM(schedule=DDPMSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", dtype="float32")),
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_round_trip(sampler, tmp_path):
    config = to_scheduler_config(sampler)
    assert from_scheduler_config(config) == sampler
    path = save_scheduler_config(sampler, tmp_path / "scheduler")
    assert json.loads(open(path).read()) == json.loads(json.dumps(config))
    assert from_scheduler_config(tmp_path) == sampler


def test_diffusers_config_round_trip():
    """A diffusers config, read and written back, keeps every value we honour."""
    config = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
              "beta_end": 0.02, "beta_schedule": "linear", "solver_order": 2, "timestep_spacing": "leading",
              "steps_offset": 1, "prediction_type": "epsilon"}
    written = to_scheduler_config(from_scheduler_config(config))
    assert {k: written[k] for k in config} == config


@pytest.mark.parametrize("sampler, message", [
    (DDIM(eta=0.5), "DDIM.eta=0.5 cannot be written"),
    (DPMSolverMultistep(convention="repo"), "convention='repo' cannot be written"),
    (LearnedVarianceDDPM(), "LearnedVarianceDDPM has no diffusers scheduler class"),
])
def test_what_diffusers_cannot_express_is_refused(sampler, message):
    with pytest.raises(ValueError, match=message):
        to_scheduler_config(sampler)


def test_written_configs_load_in_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for sampler in SAMPLERS:
        config = to_scheduler_config(sampler)
        scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        assert all(scheduler.config[k] == v for k, v in config.items() if not k.startswith("_"))
