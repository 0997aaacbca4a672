"""The training programs by name, for commands that handle any of them (`python -m train.plan`).

Each is a program.Program subclass, made from its config and asked for its model, data, state and step. A new
program adds one entry here, with the config section that marks its YAML files.
"""
import dataclasses
from typing import Callable, Optional

from omegaconf import OmegaConf

from pixart_jax.training import config as config_lib
from pixart_jax.training import controlnet, dreambooth, lcm, pcm, pretraining


@dataclasses.dataclass(frozen=True)
class Program:
    load_config: Callable       # (path, overrides) -> the validated config
    program: Callable           # cfg -> its program.Program
    section: Optional[str]      # a top-level config section only this program's configs have


PROGRAMS = {
    "pretrain": Program(config_lib.load_config, pretraining.program, None),
    "lcm": Program(lcm.load_config, lcm.program, "lcm"),
    "controlnet": Program(controlnet.load_config, controlnet.ControlNetTraining, "controlnet"),
    "pcm": Program(pcm.load_config, pcm.program, "pcm"),
    "dreambooth": Program(dreambooth.load_config, dreambooth.program, "dreambooth"),
}


def program_for(path=None, name=None) -> tuple[str, Program]:
    """(name, Program): `name` if given, else the one whose section the YAML file at `path` has (pretrain if
    none)."""
    if name is not None:
        if name not in PROGRAMS:
            raise config_lib.ConfigError(f"program {name!r} is not one of {sorted(PROGRAMS)}")
        return name, PROGRAMS[name]
    try:
        sections = set(OmegaConf.load(path)) if path is not None else set()
    except OSError as e:
        raise config_lib.ConfigError(f"cannot read config file {path}: {e}") from None
    for candidate, program in PROGRAMS.items():
        if program.section in sections:
            return candidate, program
    return "pretrain", PROGRAMS["pretrain"]
