"""A compiled step's per-chip memory plan on a TPU slice (arguments, outputs, donated, temporaries, code) and its
report; a compiler's out-of-memory refusal becomes a plan that does not fit."""
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp

from pixart_jax.planning.topologies import GIB, Topology

LARGEST = 8  # arrays listed


@dataclasses.dataclass
class Plan:
    """Per-chip HBM in bytes of one compiled step (None where the compiler refused it: then only `total` is
    known, from its out-of-memory message), its compile seconds and the largest arrays it is passed."""
    topology: Topology
    mesh_shape: dict
    compile_seconds: float
    total: int
    arguments: int | None = None
    outputs: int | None = None
    aliased: int | None = None
    temporaries: int | None = None
    code: int | None = None
    largest: list = dataclasses.field(default_factory=list)   # (name, shape, dtype, spec, bytes per chip)
    refused: str | None = None
    # per-chip bytes of the trained network's optimizer state under each optimizer (this run's and the others')
    optimizer_state: dict = dataclasses.field(default_factory=dict)
    optimizer: str | None = None    # this run's

    @property
    def capacity(self) -> int:
        return int(self.topology.chip.hbm_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.refused is None and self.total <= self.capacity


def memory_plan(compiled, topology, mesh, seconds, args) -> Plan:
    """Plan of a compiled executable: argument + output - aliased (donated) + temporary + code bytes per chip."""
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
             + m.generated_code_size_in_bytes)
    return Plan(topology, dict(mesh.shape), seconds, total, m.argument_size_in_bytes, m.output_size_in_bytes,
                m.alias_size_in_bytes, m.temp_size_in_bytes, m.generated_code_size_in_bytes, largest_arrays(args))


def compile_plan(lowered, topology, mesh, args) -> Plan:
    """Compiles `lowered` for the slice; an out-of-memory refusal becomes a Plan that does not fit."""
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        # "Used 20.5G of 15.75G hbm" or "... required for HLO temporaries (32.32G) exceeds available HBM"
        used = re.search(r"(?:Used |\()([\d.]+)([KMGT])?(?: of|\) exceeds)", message)
        total = int(float(used.group(1)) * 1024 ** "_KMGT".index(used.group(2) or "_")) if used else 0
        return Plan(topology, dict(mesh.shape), time.perf_counter() - start, total, largest=largest_arrays(args),
                    refused=message.strip().splitlines()[0][:300])
    return memory_plan(compiled, topology, mesh, time.perf_counter() - start, args)


def chip_bytes(leaf):
    """Bytes per chip of a ShapeDtypeStruct with a NamedSharding."""
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize


def largest_arrays(tree, count=LARGEST):
    """The `count` largest leaves of `tree` (ShapeDtypeStructs with NamedShardings) by bytes per chip."""
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        rows.append((jax.tree_util.keystr(path, simple=True, separator="."), tuple(leaf.shape),
                     jnp.dtype(leaf.dtype).name, str(leaf.sharding.spec), chip_bytes(leaf)))
    return sorted(rows, key=lambda r: -r[-1])[:count]


def _gib(n):
    return "-" if n is None else f"{n / GIB:.2f}"


def _size(n):
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.2f} MiB"


def format_plan(plan: Plan, what: str) -> str:
    """The report `train.plan` prints."""
    t, chip = plan.topology, plan.topology.chip
    lines = [f"{what} on {t.name} ({t.slice_name}: {t.chips} x {chip.device_kind}, {chip.hbm_gib:g} GiB HBM each), "
             f"mesh " + " x ".join(f"{k}={v}" for k, v in plan.mesh_shape.items()),
             f"compiled in {plan.compile_seconds:.1f} s" if plan.refused is None else
             f"refused by the compiler after {plan.compile_seconds:.1f} s: {plan.refused}",
             "per-chip HBM (GiB):"]
    rows = [("arguments", plan.arguments), ("outputs", plan.outputs), ("aliased (donated)", plan.aliased),
            ("temporaries", plan.temporaries), ("code", plan.code), ("total", plan.total),
            ("capacity", plan.capacity)]
    lines += [f"  {name:<18} {_gib(value):>8}" for name, value in rows if plan.refused is None or name in
              ("total", "capacity")]
    lines.append(f"  {'fits':<18} {'yes' if plan.fits else 'NO':>8}  ({100 * plan.total / plan.capacity:.0f} % of "
                 f"capacity)")
    if plan.optimizer_state:
        sizes = ", ".join(f"{name} {_size(size)}{' (this run)' if name == plan.optimizer else ''}"
                          for name, size in plan.optimizer_state.items())
        lines.append(f"optimizer state per chip (in the arguments): {sizes}")
    lines.append("largest arrays (global shape, dtype, sharding, MiB per chip):")
    lines += [f"  {name:<44} {str(shape):<22} {dtype:<9} {spec:<34} {size / 2 ** 20:9.1f}"
              for name, shape, dtype, spec, size in plan.largest]
    return "\n".join(lines)
