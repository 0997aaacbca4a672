"""Training checkpoints: one Orbax CheckpointManager over WORKDIR/checkpoints.

A checkpoint (a directory named by the optimizer step) holds `state` (model, optimizer, EMA, buffers, RNG and
micro-step, as sharded arrays), `data` (each host's Grain iterator state, one JSON file per process) and `config`
(the resolved run config). Orbax writes each checkpoint under a temporary name and renames it when complete, so an
interrupted save never looks like a checkpoint. Restoring targets the current mesh, whatever mesh saved it.
"""
import json
import os
import sys

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class _IteratorSnapshot:
    """An iterator's state taken when the save is requested, so a background write cannot see a later state.
    (Grain writes a non-DatasetIterator's `get_state()` bytes verbatim: the same JSON text a DatasetIterator
    restore reads.)"""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self):
        return self._state


class TopologyError(RuntimeError):
    """A checkpoint saved by a run with another number of processes: its data-iterator states do not apply."""


class Checkpoints:
    """Saves and restores training runs in `directory`, keeping the newest `max_to_keep`."""

    def __init__(self, directory, *, max_to_keep=3, async_save=True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()})

    def steps(self):
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step, state, data_iterator, config):
        """Starts saving checkpoint `step` (returns once the arrays are copied off the device; the write goes on
        in the background). `config` is a JSON-able dict. The caller checks the state is finite first."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
            config=ocp.args.JsonSave(config)))

    def restore(self, target, data_iterator):
        """(step, state) from the newest readable checkpoint, with `data_iterator` moved to its saved position;
        None when there is none. `target`: ShapeDtypeStructs with the shardings to restore onto. A checkpoint
        that cannot be read is reported, moved aside to `corrupt-STEP`, and the previous one is tried."""
        for step in reversed(self.steps()):
            self._check_process_count(step)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)))
            except Exception as e:  # any unreadable part makes the whole checkpoint unusable
                print(f"WARNING: checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: "
                      f"{str(e)[:300]}); moving it aside and using the previous checkpoint", file=sys.stderr,
                      flush=True)
                self._move_aside(step)
                continue
            return step, restored["state"]
        return None

    def _check_process_count(self, step):
        data = os.path.join(self.directory, str(step), "data")
        saved = [f for f in os.listdir(data) if f.startswith("process_")] if os.path.isdir(data) else []
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if saved and mine not in saved:
            raise TopologyError(f"checkpoint {step} in {self.directory} was saved by a run with a different number "
                                f"of processes ({sorted(saved)}); this run has {jax.process_count()}: resume it "
                                "with the same number of processes (the mesh shape may differ)")

    def _move_aside(self, step):
        if jax.process_index() == 0:
            dst, n = os.path.join(self.directory, f"corrupt-{step}"), 1
            while os.path.exists(dst):
                dst, n = os.path.join(self.directory, f"corrupt-{step}-{n}"), n + 1
            os.replace(os.path.join(self.directory, str(step)), dst)
        multihost_utils.sync_global_devices(f"checkpoint-move-aside-{step}")
        self._manager.reload()

    def wait(self):
        """Blocks until every started save is written."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
