"""`to_scheduler_config` is the inverse of `from_scheduler_config`, and what it writes loads in diffusers."""
import json

import pytest

from pixart_jax.samplers import (
    DDIM,
    LCM,
    PCM,
    TCD,
    DPMSolverMultistep,
    LearnedVarianceDDPM,
    SASolver,
    from_scheduler_config,
    save_scheduler_config,
    to_scheduler_config,
)
from pixart_jax.samplers.schedule import DDPMSchedule
from pixart_jax.training import pcm as pcm_training

FLOAT32_PIXART = DDPMSchedule(dtype="float32")
SAMPLERS = [
    DPMSolverMultistep(schedule=FLOAT32_PIXART),
    DPMSolverMultistep(schedule=FLOAT32_PIXART, solver_order=1, final_sigmas_type="sigma_min",
                       timestep_spacing="trailing", prediction_type="v_prediction"),
    DDIM(schedule=FLOAT32_PIXART, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=True),
    LCM(schedule=FLOAT32_PIXART, original_inference_steps=40, prediction_type="v_prediction"),
    LCM(schedule=DDPMSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", dtype="float32")),
    TCD(schedule=FLOAT32_PIXART, original_inference_steps=40, prediction_type="v_prediction"),
    PCM(schedule=FLOAT32_PIXART),
    PCM(schedule=FLOAT32_PIXART, original_inference_steps=50, prediction_type="v_prediction"),
    PCM(schedule=FLOAT32_PIXART, phases=3),
    SASolver(schedule=FLOAT32_PIXART),
    SASolver(schedule=FLOAT32_PIXART, predictor_order=3, corrector_order=1, algorithm_type="noise_prediction",
             timestep_spacing="trailing", prediction_type="v_prediction"),
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
    (TCD(gamma=0.5), "TCD.gamma=0.5 cannot be written"),
    (PCM(gamma=0.3), "PCM.gamma=0.3 cannot be written"),
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


def test_a_pcm_config_is_a_tcd_config_that_names_the_pcm_sampler():
    """diffusers reads a PCM's config as a TCDScheduler (which samples its edges at γ = 0 on N = 40); ours reads
    it back as the PCM sampler, or as TCD when asked."""
    config = to_scheduler_config(PCM(schedule=FLOAT32_PIXART))
    assert config["_class_name"] == "TCDScheduler" and config["_pixart_jax_sampler"] == "pcm"
    assert config["original_inference_steps"] == 40
    assert from_scheduler_config(config, sampler="tcd") == TCD(schedule=FLOAT32_PIXART, original_inference_steps=40)


def test_a_distilled_pcm_exports_its_phase_count(tmp_path):
    """train.pcm with pcm.phases=3 exports a scheduler config that samples 3 phases and refuses other step
    counts (which would jump between edges the model was not trained on)."""
    cfg = pcm_training.load_config(None, ["workdir=w", "steps=1", "checkpoint_every=1", "seed=0",
                                          "model.caption_dropout=0", "pcm.phases=3"])
    save_scheduler_config(pcm_training.exported_sampler(cfg), tmp_path / "export" / "scheduler")
    sampler = from_scheduler_config(tmp_path / "export")
    assert sampler == PCM(schedule=FLOAT32_PIXART, phases=3)
    assert json.loads((tmp_path / "export" / "scheduler" / "scheduler_config.json").read_text())[
        "_pixart_jax_phases"] == 3
    assert sampler.timesteps(3).tolist() == PCM().timesteps(3).tolist() == [999, 649, 324]
    with pytest.raises(ValueError, match="this PCM model was distilled with 3 phases: sample it with 3 steps, got 4"):
        sampler.timesteps(4)
