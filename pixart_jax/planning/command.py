"""Will a training config (or the sampling loop) fit a TPU slice? Compile its real train step ahead of time for the
slice and read the per-chip HBM the TPU compiler plans (`python -m train.plan CONFIG topology=v5e:2x4 [program=NAME]
key=value ...`, `pixart-jax plan ...`; needs libtpu: `pip install 'pixart-jax[tpu]'`, no TPU).

The program's own `abstract_state` and `step` build the step (the same jit, shardings and donation the run
uses) over abstract parameters and batch on the slice's ("data", "fsdp") mesh: nothing is allocated or loaded.
The model has the config's preset architecture (`model.init_from` is not read); latents are the preset's square
size unless `latent=SIDE` gives another. Exit codes: 0 fits, 1 does not fit, 2 bad config or topology.
"""
import sys

from pixart_jax.planning.pipeline import PIPELINE_KEYS, plan_pipeline
from pixart_jax.planning.plan import format_plan
from pixart_jax.planning.topologies import TopologyError, parse_topology
from pixart_jax.planning.training import describe_run, plan_train_step
from pixart_jax.training import config as config_lib
from pixart_jax.training.registry import program_for

PLAN_KEYS = ("topology", "program", "latent")


def main(argv=None) -> int:
    """`train.plan` / `pixart-jax plan`: CONFIG [topology=...] [program=...] [key=value ...], or
    pipeline=PRESET topology=... [images= steps= sampler= guidance= dtype= fsdp=] (pixart_jax/planning/pipeline.py);
    returns the exit code."""
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

