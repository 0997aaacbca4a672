"""A training config's real train step compiled ahead of time for a TPU slice: the program's own `abstract_state`
and `step` build the step (the same jit, shardings and donation the run uses) over abstract parameters and
batch on the slice's ("data", "fsdp") mesh: nothing is allocated or loaded. The model has the config's preset
architecture (`model.init_from` is not read: a LoRA fine-tune's adapters go on the abstract preset base); latents
are the preset's square size unless `latent` gives another.
"""
import dataclasses

import jax
from flax import nnx

from pixart_jax import sharding
from pixart_jax.choices import OptimizerName
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.planning.plan import Plan, chip_bytes, compile_plan
from pixart_jax.planning.topologies import Topology
from pixart_jax.training import config as config_lib


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
    """Compiles the train step of `program` (programs.Program.program: cfg -> a program.Program) for `cfg` on
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
    make_program, program = program, program(_untrained(cfg))
    model = nnx.eval_shape(program.model)
    side = model_cfg.sample_size if latent is None else int(latent)
    shapes = program.batch_shapes(model_cfg, (side, side))
    state, _ = program.abstract_state(model, mesh)
    # built outside the mesh: constants a step makes at construction (LCD's tables) stay host arrays, not
    # arrays placed on compile-only devices
    step = program.step(model, mesh)
    batch = abstract_batch(shapes, global_batch, mesh)
    with jax.set_mesh(mesh):
        plan = compile_plan(step.lower(state, batch), topology, mesh, dict(state, batch=batch))
    return dataclasses.replace(plan, optimizer=str(cfg.optimizer.name),
                               optimizer_state=optimizer_state_bytes(_untrained(cfg), make_program, model, mesh))


def optimizer_state_bytes(cfg, make_program, model, mesh):
    """{optimizer name: per-chip bytes of the trained network's optimizer state ("opt") on `mesh`} for every
    OptimizerName: what CAME's factored second moments save over AdamW's, from the abstract states alone."""
    sizes = {}
    for name in OptimizerName:
        other = make_program(dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, name=name)))
        state, _ = other.abstract_state(model, mesh)
        sizes[str(name)] = sum(chip_bytes(leaf) for leaf in jax.tree.leaves(state["opt"]))
    return sizes


def describe_run(cfg, name, path):
    m, lora = cfg.model, getattr(cfg, "lora", None)
    adapters = "" if lora is None else f", LoRA rank {lora.rank} on the frozen base"
    return (f"{name} step of {path or 'the default config'} ({m.preset}{adapters}, global batch "
            f"{cfg.data.batch_size}, compute {m.compute_dtype}, activations {m.activation_dtype}, remat {m.remat})")
