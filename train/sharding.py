"""The ("data", "fsdp") device mesh and the logical-axis rules that place parameters and batches on it.

Every parameter dimension gets a logical name from where it sits in the model (`logical_axes`); the config's rules
map logical names to mesh axes. A dimension not divisible by its mesh axis stays replicated. The batch is split
over both mesh axes (FSDP is data parallel too); with fsdp = 1 this is plain data parallelism.
"""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")


def make_mesh(data=-1, fsdp=1, devices=None):
    """A Mesh with axes ("data", "fsdp") (Auto axis types) over `devices` (default: every device of every host);
    data = -1 takes every device fsdp does not."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, there are {len(devices)}")
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _key_names(path):
    """The dict keys along a pytree path (optimizer states wrap the parameter dicts in tuples and attributes)."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def logical_axes(names, ndim):
    """Logical names of a variable's dims from its path: "layers" (the stacked block axis), "kernel_in" /
    "kernel_out" (the last two dims of a dense or patch kernel; a bias is "kernel_out"), "table" (the width of an
    adaLN scale-shift table); None for everything else (the y_embedding buffer stays whole)."""
    axes = [None] * ndim
    lead = 1 if names and names[0] == "blocks" and ndim > 0 else 0
    if lead:
        axes[0] = "layers"
    leaf = names[-1] if names else None
    if leaf == "kernel" and ndim - lead >= 2:
        axes[-2:] = ["kernel_in", "kernel_out"]
    elif leaf == "bias" and ndim - lead >= 1:
        axes[-1] = "kernel_out"
    elif leaf == "scale_shift_table" and ndim - lead >= 1:
        axes[-1] = "table"
    return tuple(axes)


def partition_spec(axes, shape, rules, mesh):
    """PartitionSpec from logical axes via `rules` {logical: mesh axis or None}; each mesh axis used once, and
    only on a dimension it divides."""
    used, spec = set(), []
    for name, size in zip(axes, shape):
        axis = rules.get(name) if name is not None else None
        if axis is None or axis in used or size % mesh.shape[axis]:
            spec.append(None)
        else:
            used.add(axis)
            spec.append(axis)
    return P(*spec)


def tree_shardings(state, mesh, rules):
    """A NamedSharding for every array leaf (array or ShapeDtypeStruct) of `state`, a dict {section: tree} such as
    the train state ("params", "opt", "ema", ...). Below the section, a leaf's dict keys are its parameter path
    (optimizer states nest the parameter dicts in tuples and attributes, which are skipped), which gives its
    logical axes; the rules place them. Scalars and everything unnamed are replicated."""
    def one(path, leaf):
        shape = np.shape(leaf)
        axes = logical_axes(_key_names(path)[1:], len(shape))
        return NamedSharding(mesh, partition_spec(axes, shape, rules, mesh))
    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh):
    """Batches are split along their first dim over both mesh axes."""
    return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh):
    return NamedSharding(mesh, P())


def device_batch(batch, mesh):
    """This host's slice of the global batch (NumPy, rows in process order) as global jax.Arrays; non-numeric
    entries (e.g. bucket names) are left out."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
            if np.asarray(v).dtype.kind in "biuf"}
