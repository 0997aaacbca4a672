"""A few train steps of a program on fake CPU devices, for the mesh-equivalence tests."""
import jax

from pixart_jax.sharding import device_batch, make_mesh
from pixart_jax.training.data import stack_examples
from pixart_jax.training.synthetic import synthetic_examples


def run_program_steps(program, devices, mesh_shape, count=2, snapshot=lambda state: None):
    """(losses, [snapshot(state) before and after each step], the final state) of `count` steps of `program` (a
    program.Program) on one synthetic batch, on `devices` fake devices shaped (data, fsdp)."""
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:devices])
    model = program.model()
    batch = stack_examples(synthetic_examples(program.cfg.data.batch_size, seed=1,
                                              caption_channels=model.cfg.caption_channels))
    losses = []
    with jax.set_mesh(mesh):
        state, _ = program.state(model, mesh)
        step = program.step(model, mesh)
        snapshots = [snapshot(state)]
        for _ in range(count):
            state, metrics = step(state, device_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
            snapshots.append(snapshot(state))
    return losses, snapshots, state
