"""TPU slices by name, for compiling ahead of time on any machine (no TPU needed, only the `libtpu` package:
`pip install 'pixart-jax[tpu]'`).

A topology is `GENERATION:AxB[xC]` (chips along each axis, e.g. `v5e:2x4`) or a Cloud TPU slice name
`GENERATION-N` (e.g. `v5e-8`, `v4-8`: N counts TensorCores, two per v4/v5p chip, which JAX presents as one
megacore device). `CHIPS` holds each generation's HBM per chip, the one place those sizes live.
"""
import dataclasses
import importlib.util
import math
import os
import re

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    device_kind: str            # jax's Device.device_kind for it
    hbm_gib: float              # HBM per chip (per JAX device)
    cores_per_chip: int         # TensorCores one JAX device spans (2: megacore)
    dims: int                   # torus dimensions of its slices (2 or 3)
    chip_config: str = "default"


CHIPS = {
    "v4": Chip("TPU v4", 32, 2, 3, "megacore"),
    "v5e": Chip("TPU v5 lite", 16, 1, 2),
    "v5p": Chip("TPU v5", 95, 2, 3),
    "v6e": Chip("TPU v6 lite", 32, 1, 2),
}
# Chips of a slice -> the chip grid Cloud TPU builds it as.
_GRIDS = {2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
          3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"}}


class TopologyError(ValueError):
    """A topology name that cannot be built, with the reason."""


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: str   # a CHIPS key
    grid: str         # chips along each axis, "2x4"

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(int(n) for n in self.grid.split("x"))

    @property
    def name(self) -> str:
        return f"{self.generation}:{self.grid}"

    @property
    def slice_name(self) -> str:
        return f"{self.generation}-{self.chips * self.chip.cores_per_chip}"

    def devices(self) -> list:
        """Compile-only devices of this slice (needs libtpu)."""
        _quiet_libtpu(self.slice_name)
        try:
            from jax.experimental import topologies
            first, second = (int(n) for n in self.grid.split("x")[:2])
            bounds = (min(first, 2), min(second, 2), 1)  # a host holds up to 2x2x1 chips
            return topologies.get_topology_desc(self.name, platform="tpu", chip_config_name=self.chip.chip_config,
                                                chips_per_host_bounds=bounds).devices
        except (ImportError, RuntimeError) as e:
            missing = importlib.util.find_spec("libtpu") is None
            raise TopologyError(f"cannot build TPU topology {self.name}: {e}" + (
                ". Compiling for a TPU on this machine needs libtpu: pip install 'pixart-jax[tpu]'" if missing
                else "")) from None


def _quiet_libtpu(accelerator_type):
    """Sets what libtpu otherwise asks the (absent) TPU VM's metadata server for, before it loads, so that planning
    prints no warnings about this machine: compile-only devices touch no TPU. Values already set are kept."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # several planning processes may load libtpu at once
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def parse_topology(name: str) -> Topology:
    """A Topology from `v5e:2x4` or `v5e-8`; TopologyError naming the problem otherwise."""
    match = re.fullmatch(r"(v\d+[a-z]?)(?::(\d+(?:x\d+)*)|-(\d+))", name.strip())
    if not match or match.group(1) not in CHIPS:
        raise TopologyError(f"topology {name!r} is not GENERATION:AxB[xC] or GENERATION-N with a generation in "
                            f"{sorted(CHIPS)} (e.g. v5e:2x4, v5e-8, v4-8)")
    generation, grid, cores = match.groups()
    chip = CHIPS[generation]
    if grid is None:
        chips, rest = divmod(int(cores), chip.cores_per_chip)
        grid = _GRIDS[chip.dims].get(chips) if not rest else None
        if grid is None:
            raise TopologyError(f"no {generation} slice with {cores} TensorCores; known: "
                                f"{[f'{generation}-{c * chip.cores_per_chip}' for c in _GRIDS[chip.dims]]}")
    elif grid.count("x") + 1 != chip.dims:
        raise TopologyError(f"{generation} slices have {chip.dims} dimensions, got {grid!r} in {name!r}")
    elif not all(int(n) for n in grid.split("x")):
        raise TopologyError(f"a slice has at least one chip along each axis, got {grid!r} in {name!r}")
    return Topology(generation, grid)
