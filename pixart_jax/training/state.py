"""Train states: dicts of global jax.Arrays that a program's `init(*networks)` builds from the networks' pure-dict
variables, placed on a mesh by the logical axes those variables declare; or their abstract shapes, the target a
checkpoint is restored onto (whatever mesh it was saved from)."""
import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax import sharding


def split_model(model):
    """(graphdef, params, buffers): the static structure and pure-dict trees of nnx.Params and other variables."""
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)


def common_state(tx, seed, trained, buffers):
    """What every train state holds: `step` (micro-steps done), `buffers` (never trained: y_embedding), `opt` (the
    optax state of the `trained` tree), `rng` (the run's base key)."""
    return {"step": jnp.zeros((), jnp.int32), "buffers": buffers, "opt": tx.init(trained),
            "rng": jax.random.PRNGKey(seed)}


def place_state(init, networks, axes, mesh, rules, *, abstract=False, donate=False):
    """(state, shardings): `init(*networks)` computed on `mesh`, each array placed by `rules` from the logical
    `axes` ({variable path: logical axes}) of the networks. `abstract`: ShapeDtypeStructs with those shardings
    instead, nothing computed (`networks` may then be abstract too). `donate`: the networks' arrays become the
    state's (unusable afterwards), so a large model is not held twice."""
    shapes = jax.eval_shape(init, *networks)
    shardings = sharding.tree_shardings(shapes, mesh, rules, axes)
    if abstract:
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        return target, shardings
    donated = tuple(range(len(networks))) if donate else ()
    return jax.jit(init, out_shardings=shardings, donate_argnums=donated)(*networks), shardings
