"""Choosing a sampler: by name, or from a diffusers scheduler config (`scheduler/scheduler_config.json`)."""
import json
import pathlib

from pixart_jax.samplers.ddim import DDIM
from pixart_jax.samplers.ddpm import LearnedVarianceDDPM
from pixart_jax.samplers.dpm_solver import DPMSolverMultistep
from pixart_jax.samplers.lcm import LCM
from pixart_jax.samplers.schedule import DDPMSchedule

SAMPLERS = {"dpm": DPMSolverMultistep, "ddim": DDIM, "lcm": LCM, "ddpm": LearnedVarianceDDPM}
SCHEDULER_CLASSES = {"DPMSolverMultistepScheduler": "dpm", "DDIMScheduler": "ddim", "LCMScheduler": "lcm"}
CONFIG_NAME = "scheduler_config.json"

_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
_PIXART_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
# diffusers' class defaults of every key that changes what we compute: a config may omit any of them.
_DEFAULTS = {
    "dpm": dict(_PIXART_SCHEDULE, prediction_type="epsilon", solver_order=2, solver_type="midpoint",
                lower_order_final=True, euler_at_final=False, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
                timestep_spacing="linspace", steps_offset=0),
    "ddim": dict(_PIXART_SCHEDULE, prediction_type="epsilon", timestep_spacing="leading", steps_offset=0,
                 set_alpha_to_one=True, clip_sample=True, clip_sample_range=1.0),
    "lcm": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", original_inference_steps=50, timestep_scaling=10.0, clip_sample=False,
                clip_sample_range=1.0),
    "ddpm": dict(_PIXART_SCHEDULE),
}
# Options we do not implement: a config must leave them at these values.
_COMMON_REQUIRED = dict(thresholding=False, trained_betas=None, rescale_betas_zero_snr=False)
_REQUIRED = {
    "dpm": dict(_COMMON_REQUIRED, algorithm_type="dpmsolver++", variance_type=None, use_karras_sigmas=False,
                use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False,
                use_dynamic_shifting=False),
    "ddim": _COMMON_REQUIRED, "lcm": _COMMON_REQUIRED,
    "ddpm": dict(_COMMON_REQUIRED, prediction_type="epsilon"),  # the IDDPM sampler reads ε and the variance
}


def make_sampler(name, **options):
    """The sampler registered as `name` ("dpm", "ddim", "lcm", "ddpm") with dataclass `options`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**options)


def load_scheduler_config(path_or_dict):
    """A scheduler config as a dict, from a dict, a JSON file, a scheduler folder or a whole diffusers model folder."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    path = pathlib.Path(path_or_dict)
    for candidate in (path, path / CONFIG_NAME, path / "scheduler" / CONFIG_NAME):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise ValueError(f"no scheduler config at {path} (looked for the file, {CONFIG_NAME} and scheduler/{CONFIG_NAME})")


def from_scheduler_config(path_or_dict, sampler=None, **options):
    """The sampler a diffusers scheduler config describes, its config fields honoured.

    `_class_name` picks it (DPMSolverMultistepScheduler → "dpm", DDIMScheduler → "ddim", LCMScheduler → "lcm")
    unless `sampler` names one; as with diffusers' `from_config`, keys the chosen sampler does not know are ignored
    and missing keys take diffusers' defaults for that class. The schedule is held in float32 as diffusers does
    (see `DDPMSchedule`). `options` override dataclass fields (e.g. eta=,
    convention=). ValueError for an unknown class or a setting we do not implement (prediction_type "sample",
    thresholding, Karras sigmas, …); prediction_type "epsilon" and "v_prediction" are honoured.
    """
    config = load_scheduler_config(path_or_dict)
    class_name = config.get("_class_name")
    kind = sampler if sampler is not None else SCHEDULER_CLASSES.get(class_name)
    if kind is None:
        raise ValueError(f"unsupported scheduler class {class_name!r}; supported: {sorted(SCHEDULER_CLASSES)} "
                         f"(or pass sampler= one of {sorted(SAMPLERS)})")
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {sorted(SAMPLERS)}")
    for key, required in _REQUIRED[kind].items():
        if config.get(key, required) != required:
            raise ValueError(f"{class_name or 'scheduler config'}: {key}={config[key]!r} is not supported "
                             f"(only {required!r})")
    values = {key: config.get(key, default) for key, default in _DEFAULTS[kind].items()}
    schedule = DDPMSchedule(**{key: values.pop(key) for key in _SCHEDULE_KEYS}, dtype="float32")
    return SAMPLERS[kind](schedule=schedule, **{**values, **options})
