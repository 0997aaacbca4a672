"""The ("data", "fsdp") device mesh and the logical-axis rules that place parameters and batches on it.

Every parameter declares logical names for its dims where it is created (`nnx.Param(..., axes=(...))`, see
pixart_jax/models/transformer.py); the config's rules map logical names to mesh axes. A dimension not divisible by its
mesh axis stays replicated. The batch is split over both mesh axes (FSDP is data parallel too); with fsdp = 1 this
is plain data parallelism.
"""
import jax
import numpy as np
from flax import nnx
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


def variable_axes(model):
    """{dotted path: logical axes} of every variable of `model` (real or abstract), read from the `axes` metadata
    each nnx.Param is created with. A parameter of two or more dims without axes is an error (it would silently
    stay replicated); variables that are not nnx.Params (the y_embedding buffer) are replicated."""
    axes, missing = {}, []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        name, value = ".".join(map(str, path)), var.get_value()
        names = var.get_metadata("axes", None)
        if names is None:
            if isinstance(var, nnx.Param) and np.ndim(value) >= 2:
                missing.append(f"{name} {tuple(np.shape(value))}")
            continue
        if len(names) != np.ndim(value):
            raise ValueError(f"parameter {name} of shape {tuple(np.shape(value))} declares {len(names)} logical axes "
                             f"{names}")
        axes[name] = tuple(names)
    if missing:
        raise ValueError("parameters without logical axes (declare axes= where the nnx.Param is made): "
                         + ", ".join(missing))
    return axes


def stack_axes(module, name="layers"):
    """Prepends the logical axis `name` to the axes of every variable of `module`, whose arrays were stacked
    along a new leading axis (blocks built with jax.vmap)."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and node.get_metadata("axes", None) is not None:
            node.set_metadata("axes", (name, *node.get_metadata("axes")))


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


def tree_shardings(state, mesh, rules, axes):
    """A NamedSharding for every array leaf (array or ShapeDtypeStruct) of `state`, a dict {section: tree} such as
    the train state ("params", "opt", "ema", ...). Below the section, a leaf's dict keys are its parameter path
    (optimizer states nest the parameter dicts in tuples and attributes, which are skipped); `axes` ({path: logical
    axes}, from `variable_axes`) names its dims and the rules place them. Everything else is replicated."""
    def one(path, leaf):
        shape = np.shape(leaf)
        name = ".".join(_key_names(path)[1:])
        names = axes.get(name, (None,) * len(shape))
        if len(names) != len(shape):  # a state array of another rank than its parameter: no rule can place it
            raise ValueError(f"state array {jax.tree_util.keystr(path)} of shape {shape} sits at parameter {name} "
                             f"whose logical axes are {names}")
        return NamedSharding(mesh, partition_spec(names, shape, rules, mesh))
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


def place(module, mesh, rules=None):
    """Puts `module`'s variables on `mesh`, in place: parameters by their logical axes and `rules` ({logical:
    mesh axis}; None replicates everything), other variables replicated. Arrays already placed so are not copied;
    an abstract module (nnx.eval_shape) gets ShapeDtypeStructs carrying the shardings."""
    state = nnx.state(module)
    pure = nnx.to_pure_dict(state)
    axes = variable_axes(module) if rules else {}
    shardings = tree_shardings({"module": pure}, mesh, rules or {}, axes)["module"]
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) if isinstance(a, jax.ShapeDtypeStruct)
        else jax.device_put(a, s), pure, shardings))
    nnx.update(module, state)


def data_parallel_devices(batch, devices, fsdp=1):
    """The first k of `devices`, k the largest count that divides `batch` and is a multiple of `fsdp` (a batch
    is split evenly, never padded: padding would change the shape, and so the values, of drawn noise)."""
    counts = [k for k in range(fsdp, len(devices) + 1, fsdp) if batch % k == 0]
    if not counts:
        raise ValueError(f"a batch of {batch} cannot be split over {fsdp}-way sharded weights on {len(devices)} "
                         f"devices: use a multiple of {fsdp} images")
    return list(devices)[:max(counts)]
