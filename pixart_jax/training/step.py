"""The one jitted train step every training program runs: `(state, batch) -> (state, metrics)`, the state donated.

The state is a dict of global jax.Arrays with at least `step` (micro-steps done) and `rng` (the run's base key). A
program supplies only its update `(state, batch, key) -> (state, metrics)` (its loss and optimizer update); the
step draws its key as `fold_in(rng, step)`, so a resumed run draws exactly what an uninterrupted one would, counts
the micro-step and runs plain `jax.jit` over it with explicit shardings.
"""
import dataclasses

import jax

from pixart_jax import sharding
from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.samplers.prediction import check_prediction_type


@dataclasses.dataclass(frozen=True)
class Objective:
    """What every program's loss shares: x0 = latent_scale · a posterior sample; the model regresses
    prediction_type (checked when the settings are made, before anything is traced)."""
    latent_scale: float = LATENT_SCALE
    prediction_type: str = "epsilon"

    def __post_init__(self):
        check_prediction_type(self.prediction_type)


class TrainStep:
    """The jitted step of `update` over states sharded as `state_shardings` on `mesh`. `traces` counts how often it
    was traced: once per batch shape (aspect-ratio bucket), never per step."""

    def __init__(self, update, state_shardings: dict, mesh: jax.sharding.Mesh):
        self.traces = 0

        def step(state, batch):
            self.traces += 1
            new, metrics = update(state, batch, jax.random.fold_in(state["rng"], state["step"]))
            return dict(new, step=state["step"] + 1), metrics

        self._jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                               out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
        # XLA:CPU runs every device's share of a program on one thread pool: with several multi-device steps
        # queued, collectives can starve (seen as a rendezvous timeout), so on CPU one step runs at a time.
        self._one_at_a_time = mesh.devices.flat[0].platform == "cpu" and mesh.size > 1

    def lower(self, state, batch):
        """The step lowered for these arguments, which may be abstract (ShapeDtypeStructs with shardings):
        `.compile()` builds it ahead of time, e.g. for a TPU slice this machine does not have (planning/)."""
        return self._jitted.lower(state, batch)

    def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
        out = self._jitted(state, batch)
        return jax.block_until_ready(out) if self._one_at_a_time else out
