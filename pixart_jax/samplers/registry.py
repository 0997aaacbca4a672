"""Choosing a sampler: by name, or from a diffusers scheduler config (`scheduler/scheduler_config.json`), and
writing a sampler back as such a config (`to_scheduler_config`, the inverse of `from_scheduler_config`)."""
import dataclasses
import enum
import json
import pathlib

from pixart_jax.choices import choose
from pixart_jax.files import atomic_file
from pixart_jax.samplers.base import Sampler
from pixart_jax.samplers.ddim import DDIM
from pixart_jax.samplers.ddpm import LearnedVarianceDDPM
from pixart_jax.samplers.dpm_solver import DPMSolverMultistep
from pixart_jax.samplers.lcm import LCM
from pixart_jax.samplers.pcm import PCM
from pixart_jax.samplers.sa_solver import SASolver
from pixart_jax.samplers.schedule import PIXART_SCHEDULE, DDPMSchedule
from pixart_jax.samplers.tcd import TCD


class SamplerName(enum.StrEnum):
    dpm = "dpm"      # DPM-Solver++ multistep (DPMSolverMultistepScheduler)
    ddim = "ddim"    # DDIM, η ≥ 0 (DDIMScheduler)
    lcm = "lcm"      # latent consistency model sampling (LCMScheduler)
    ddpm = "ddpm"    # the repo's learned-variance IDDPM sampler (no diffusers scheduler)
    tcd = "tcd"      # trajectory consistency sampling, γ ≥ 0 (TCDScheduler)
    pcm = "pcm"      # phased consistency models' phase-edge jumps (written as a TCDScheduler config)
    sa = "sa"        # SA-Solver predictor-corrector (SASolverScheduler)


SAMPLERS = {SamplerName.dpm: DPMSolverMultistep, SamplerName.ddim: DDIM, SamplerName.lcm: LCM,
            SamplerName.ddpm: LearnedVarianceDDPM, SamplerName.tcd: TCD, SamplerName.pcm: PCM,
            SamplerName.sa: SASolver}
SCHEDULER_CLASSES = {"DPMSolverMultistepScheduler": SamplerName.dpm, "DDIMScheduler": SamplerName.ddim,
                     "LCMScheduler": SamplerName.lcm, "TCDScheduler": SamplerName.tcd,
                     "SASolverScheduler": SamplerName.sa}
# Samplers diffusers has no class of its own for, written as the class that samples the same (PCM on N = 40 with
# M ∈ {1, 2, 4, 8}: TCDScheduler at γ = 0) and named in this private key, which diffusers ignores.
WRITTEN_AS = {SamplerName.pcm: "TCDScheduler"}
SAMPLER_KEY = "_pixart_jax_sampler"
# Sampler fields diffusers has no key for, written (when set) under these private keys, which diffusers ignores.
PRIVATE_KEYS = {SamplerName.pcm: {"phases": "_pixart_jax_phases"}}
CONFIG_NAME = "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose formats and defaults we reproduce and write

_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
_PIXART_SCHEDULE = {key: getattr(PIXART_SCHEDULE, key) for key in _SCHEDULE_KEYS}
_TCD_DEFAULTS = dict(  # also LCMScheduler's (Stable Diffusion's schedule)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", original_inference_steps=50)
# diffusers' class defaults of every key that changes what we compute: a config may omit any of them.
_DEFAULTS = {
    SamplerName.dpm: dict(_PIXART_SCHEDULE, prediction_type="epsilon", solver_order=2, solver_type="midpoint",
                          lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                          lambda_min_clipped=-float("inf"), timestep_spacing="linspace", steps_offset=0),
    SamplerName.ddim: dict(_PIXART_SCHEDULE, prediction_type="epsilon", timestep_spacing="leading", steps_offset=0,
                           set_alpha_to_one=True, clip_sample=True, clip_sample_range=1.0),
    SamplerName.lcm: dict(_TCD_DEFAULTS, timestep_scaling=10.0, clip_sample=False, clip_sample_range=1.0),
    SamplerName.ddpm: dict(_PIXART_SCHEDULE),
    SamplerName.tcd: _TCD_DEFAULTS, SamplerName.pcm: _TCD_DEFAULTS,
    SamplerName.sa: dict(_PIXART_SCHEDULE, prediction_type="epsilon", predictor_order=2, corrector_order=2,
                         algorithm_type="data_prediction", lower_order_final=True, lambda_min_clipped=-float("inf"),
                         timestep_spacing="linspace", steps_offset=0),
}
# Options we do not implement: a config must leave them at these values.
_COMMON_REQUIRED = dict(thresholding=False, trained_betas=None, rescale_betas_zero_snr=False)
_REQUIRED = {
    SamplerName.dpm: dict(_COMMON_REQUIRED, algorithm_type="dpmsolver++", variance_type=None, use_karras_sigmas=False,
                          use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
                          use_flow_sigmas=False, use_dynamic_shifting=False),
    SamplerName.ddim: _COMMON_REQUIRED, SamplerName.lcm: _COMMON_REQUIRED,
    SamplerName.ddpm: dict(_COMMON_REQUIRED, prediction_type="epsilon"),  # the IDDPM sampler reads ε and variance
    SamplerName.tcd: _COMMON_REQUIRED, SamplerName.pcm: _COMMON_REQUIRED,
    SamplerName.sa: dict(_COMMON_REQUIRED, tau_func=None, variance_type=None, use_karras_sigmas=False,
                         use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False),
}


def make_sampler(name: str, **options) -> Sampler:
    """The sampler registered as `name` (a SamplerName: "dpm", "ddim", "lcm", "ddpm", "tcd", "pcm", "sa") with
    dataclass `options`."""
    return SAMPLERS[choose(SamplerName, name, "sampler")](**options)


def sampler_name(sampler):
    """The SamplerName of a sampler object."""
    for name, cls in SAMPLERS.items():
        if type(sampler) is cls:
            return name
    raise ValueError(f"{type(sampler).__name__} is not a registered sampler")


def load_scheduler_config(path_or_dict):
    """A scheduler config as a dict, from a dict, a JSON file, a scheduler folder or a whole diffusers model folder."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    path = pathlib.Path(path_or_dict)
    for candidate in (path, path / CONFIG_NAME, path / "scheduler" / CONFIG_NAME):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise ValueError(f"no scheduler config at {path} (looked for the file, {CONFIG_NAME} and scheduler/{CONFIG_NAME})")


def from_scheduler_config(path_or_dict: str | dict, sampler: str | None = None, **options) -> Sampler:
    """The sampler a diffusers scheduler config describes, its config fields honoured.

    `sampler` names it, or else the config's `_pixart_jax_sampler` (what `to_scheduler_config` writes for a sampler
    diffusers has no class of its own for: "pcm"), or else `_class_name` (DPMSolverMultistepScheduler → "dpm",
    DDIMScheduler → "ddim", LCMScheduler → "lcm", TCDScheduler → "tcd", SASolverScheduler → "sa"). As with
    diffusers' `from_config`, keys the chosen sampler does not know are ignored and missing keys take diffusers'
    defaults for that class; PRIVATE_KEYS (a PCM's phase count) are read back. The schedule is held in float32 as
    diffusers does (see `DDPMSchedule`). `options` override dataclass fields (e.g. eta=, convention=). ValueError
    for an unknown class or a setting we do not implement (prediction_type "sample", thresholding, Karras sigmas,
    …); prediction_type "epsilon" and "v_prediction" are honoured.
    """
    config = load_scheduler_config(path_or_dict)
    class_name = config.get("_class_name")
    sampler = config.get(SAMPLER_KEY) if sampler is None else sampler
    if sampler is None and class_name not in SCHEDULER_CLASSES:
        raise ValueError(f"unsupported scheduler class {class_name!r}; supported: {sorted(SCHEDULER_CLASSES)} "
                         f"(or pass sampler= one of {[m.value for m in SamplerName]})")
    kind = choose(SamplerName, sampler, "sampler") if sampler is not None else SCHEDULER_CLASSES[class_name]
    for key, required in _REQUIRED[kind].items():
        if config.get(key, required) != required:
            raise ValueError(f"{class_name or 'scheduler config'}: {key}={config[key]!r} is not supported "
                             f"(only {required!r})")
    values = {key: config.get(key, default) for key, default in _DEFAULTS[kind].items()}
    values.update({field: config[key] for field, key in PRIVATE_KEYS.get(kind, {}).items() if key in config})
    schedule = DDPMSchedule(**{key: values.pop(key) for key in _SCHEDULE_KEYS}, dtype="float32")
    return SAMPLERS[kind](schedule=schedule, **{**values, **options})


def to_scheduler_config(sampler: Sampler) -> dict:
    """The diffusers scheduler config (a dict to write as scheduler_config.json) that `from_scheduler_config`
    turns back into `sampler` (with a float32 schedule, as diffusers holds it). ValueError for a sampler or a
    setting diffusers' schedulers cannot express (the IDDPM sampler, the repo conventions, DDIM's η, which
    diffusers takes per call)."""
    kind = sampler_name(sampler)
    classes = {name: cls for cls, name in SCHEDULER_CLASSES.items()} | WRITTEN_AS
    if kind not in classes:
        raise ValueError(f"{type(sampler).__name__} has no diffusers scheduler class")
    config = {"_class_name": classes[kind], "_diffusers_version": DIFFUSERS_VERSION,
              **({SAMPLER_KEY: kind.value} if kind in WRITTEN_AS else {}),
              **{key: getattr(sampler.schedule, key) for key in _SCHEDULE_KEYS}}
    config.update({key: getattr(sampler, key) for key in _DEFAULTS[kind] if key not in _SCHEDULE_KEYS})
    private = PRIVATE_KEYS.get(kind, {})
    config.update({key: getattr(sampler, field) for field, key in private.items()
                   if getattr(sampler, field) is not None})
    for field in dataclasses.fields(sampler):
        if field.name not in {*config, *private, "schedule"} and getattr(sampler, field.name) != field.default:
            raise ValueError(f"{type(sampler).__name__}.{field.name}={getattr(sampler, field.name)!r} cannot be "
                             "written in a diffusers scheduler config")
    return {**config, **_REQUIRED[kind]}


def save_scheduler_config(sampler: Sampler, directory: str) -> str:
    """Writes `to_scheduler_config(sampler)` as DIRECTORY/scheduler_config.json (what diffusers and
    `from_scheduler_config` read); returns the file's path."""
    path = pathlib.Path(directory) / CONFIG_NAME
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(to_scheduler_config(sampler), f, indent=2)
    return str(path)
