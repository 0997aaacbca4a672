"""Will a training config fit a TPU slice? Compile its real train step ahead of time for the slice and read the
per-chip HBM the TPU compiler plans (`python -m train.plan CONFIG topology=v5e:2x4 [program=NAME] key=value ...`,
`pixart-jax plan ...`; needs libtpu: `pip install 'pixart-jax[tpu]'`, no TPU).

The program's own `abstract_state` and `make_step` build the step (the same jit, shardings and donation the run
uses) over abstract parameters and batch on the slice's ("data", "fsdp") mesh: nothing is allocated or loaded.
The model has the config's preset architecture (`model.init_from` is not read); latents are the preset's square
size unless `latent=SIDE` gives another. Exit codes: 0 fits, 1 does not fit, 2 bad config or topology.
"""
import dataclasses
import math
import re
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax import sharding
from pixart_jax.config import PRESETS
from pixart_jax.topologies import GIB, Topology, TopologyError, parse_topology
from pixart_jax.training import config as config_lib
from pixart_jax.training.data import feature_batch_shapes
from pixart_jax.training.programs import program_for
from pixart_jax.training.step import make_optimizer, split_model

PLAN_KEYS = ("topology", "program", "latent")
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


def largest_arrays(tree, count=LARGEST):
    """The `count` largest leaves of `tree` (ShapeDtypeStructs with NamedShardings) by bytes per chip."""
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        per_chip = math.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
        rows.append((jax.tree_util.keystr(path, simple=True, separator="."), tuple(leaf.shape),
                     jnp.dtype(leaf.dtype).name, str(leaf.sharding.spec), per_chip))
    return sorted(rows, key=lambda r: -r[-1])[:count]


def abstract_batch(shapes, global_batch, mesh):
    """ShapeDtypeStructs of a global batch, split over the mesh as device_batch places real ones."""
    place = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((global_batch, *shape), dtype, sharding=place)
            for k, (shape, dtype) in shapes.items()}


def _untrained(cfg):
    """`cfg` with no checkpoint to load: a plan needs the model's shapes, not its weights."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None))
    if hasattr(cfg, "controlnet"):
        cfg = dataclasses.replace(cfg, controlnet=dataclasses.replace(cfg.controlnet, init_from=None))
    return cfg


def plan_train_step(cfg, program, topology: Topology, latent: int | None = None) -> Plan:
    """Compiles the train step of `program` (programs.Program.program: cfg -> model, state and step) for `cfg` on
    the slice `topology` for square latents of side `latent` (default: the preset's) and returns its per-chip
    memory plan."""
    devices = topology.devices()
    try:
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices=devices)
    except ValueError as e:
        raise config_lib.ConfigError(f"{e} of {topology.name}") from None
    global_batch = cfg.data.batch_size
    if global_batch % mesh.size:
        raise config_lib.ConfigError(f"data.batch_size {global_batch} is not divisible by the {mesh.size} chips of "
                                     f"{topology.name}")
    model_cfg = PRESETS[cfg.model.preset]
    program = program(cfg)
    model = nnx.eval_shape(lambda: program.build_model(_untrained(cfg)))
    graphdef = split_model(model)[0]
    tx, schedule = make_optimizer(cfg.optimizer, global_batch)
    side = model_cfg.sample_size if latent is None else int(latent)
    shapes = getattr(program, "batch_shapes", feature_batch_shapes)(cfg, model_cfg, (side, side))
    state, shardings = program.abstract_state(model, tx, cfg.seed, mesh, dict(cfg.mesh.rules))
    # built outside the mesh: constants a step makes at construction (LCD's tables) stay host arrays, not
    # arrays placed on compile-only devices
    step = program.make_step(cfg, graphdef, tx, schedule, shardings, mesh)
    batch = abstract_batch(shapes, global_batch, mesh)
    with jax.set_mesh(mesh):
        return compile_plan(step.lower(state, batch), topology, mesh, dict(state, batch=batch))


def _gib(n):
    return "-" if n is None else f"{n / GIB:.2f}"


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
    lines.append("largest arrays (global shape, dtype, sharding, MiB per chip):")
    lines += [f"  {name:<44} {str(shape):<22} {dtype:<9} {spec:<34} {size / 2 ** 20:9.1f}"
              for name, shape, dtype, spec, size in plan.largest]
    return "\n".join(lines)


def describe_run(cfg, name, path):
    m = cfg.model
    return (f"{name} step of {path or 'the default config'} ({m.preset}, global batch {cfg.data.batch_size}, "
            f"compute {m.compute_dtype}, activations {m.activation_dtype}, remat {m.remat})")


def main(argv=None) -> int:
    """`train.plan` / `pixart-jax plan`: CONFIG [topology=...] [program=...] [key=value ...], or
    pipeline=PRESET topology=... [images= steps= sampler= guidance= dtype= fsdp=] (pixart_jax/pipeline_plan.py);
    returns the exit code."""
    from pixart_jax.pipeline_plan import PIPELINE_KEYS, plan_pipeline

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    path, rest = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    pipeline = any(a.startswith("pipeline=") for a in rest)
    own = PIPELINE_KEYS + ("topology",) if pipeline else PLAN_KEYS
    keys = {k: v for k, _, v in (a.partition("=") for a in rest) if k in own}
    overrides = [a for a in rest if a.partition("=")[0] not in own]
    try:
        if "topology" not in keys:
            raise TopologyError("name the slice: topology=v5e:2x4 (or v5e-8, v4-8, v5p-8, v6e-8, ...)")
        topology = parse_topology(keys.pop("topology"))
        if pipeline:
            if overrides or path:
                raise config_lib.ConfigError(f"a pipeline plan takes no config or overrides, got "
                                             f"{[path] if path else []}{overrides}; its keys: {PIPELINE_KEYS}")
            preset = keys.pop("pipeline")
            plan, what = plan_pipeline(preset, topology, **keys), f"sampling loop of {preset} ({keys or 'defaults'})"
        else:
            name, program = program_for(path, keys.get("program"))
            cfg = program.load_config(path, overrides)
            plan = plan_train_step(cfg, program.program, topology, keys.get("latent"))
            what = describe_run(cfg, name, path)
    except (config_lib.ConfigError, TopologyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(plan, what), flush=True)
    return 0 if plan.fits else 1

