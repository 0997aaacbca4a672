"""`inference_jit`: jax.jit for a function of NNX modules that it only reads (running a model, not training it)."""
import functools

import jax
from flax import nnx


def inference_jit(fn):
    """fn(module, *args) jitted with the module's weights as plain inputs of the compiled call.

    Why not nnx.jit: it also returns the module's state from the compiled call (so that updates flow back), and for
    a model the function only reads that makes XLA write every weight out again on each call: a copy of all the
    weights per call (T5-XXL: 19 GB in float32; measured on a 2048² Linear, 9.1 ms per call vs 1.8 ms this way).
    Compiles once per module structure and argument shapes; the module must not be changed by `fn` (a change is
    dropped)."""
    @functools.partial(jax.jit, static_argnums=0)
    def run(graphdef, state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    @functools.wraps(fn)
    def call(module, *args):
        graphdef, state = nnx.split(module)
        return run(graphdef, state, *args)

    return call
