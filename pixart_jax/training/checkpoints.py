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
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from pixart_jax.training.errors import RunError


class _IteratorSnapshot:
    """An iterator's state taken when the save is requested, so a background write cannot see a later state.
    (Grain writes a non-DatasetIterator's `get_state()` bytes verbatim: the same JSON text a DatasetIterator
    restore reads.)"""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self):
        return self._state


class ProcessCountError(RunError):
    """A checkpoint saved by a run with another number of processes: its data-iterator states do not apply."""


class ResumeMismatchError(RunError):
    """The checkpoints in a workdir were saved by a run with other settings or another state structure."""


class DamagedCheckpointsError(RunError):
    """Checkpoints exist but none of them can be read."""


class NonFiniteStateError(RunError):
    """A state to save holds NaN or Inf values."""


def _name(path):
    """"opt/1/0/mu/blocks/..." for a tree path (dict keys, sequence indices and named-tuple fields alike: Orbax's
    metadata tree stores named tuples as dicts)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


@jax.jit
def _finite(state):
    return jax.tree.map(lambda x: jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else True, state)


def nonfinite_arrays(state) -> list[str]:
    """The paths of the arrays of `state` that hold NaN or Inf."""
    flags = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite(state)))[0]
    return [_name(path) for path, ok in flags if not ok]


def _structure_differences(saved, target):
    """What differs between the array metadata of a saved state and the ShapeDtypeStructs of `target`."""
    def shapes(tree):
        return {_name(p): (tuple(x.shape), jnp.dtype(x.dtype))
                for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    before, now = shapes(saved), shapes(target)
    missing, unexpected = sorted(now.keys() - before.keys()), sorted(before.keys() - now.keys())
    changed = [f"{k} {before[k][0]} {before[k][1]} saved, {now[k][0]} {now[k][1]} now" for k in sorted(now)
               if k in before and before[k] != now[k]]
    problems = []
    for what, keys in (("arrays this run needs are not in it", missing), ("arrays in it this run has no place for",
                                                                         unexpected), ("arrays differ", changed)):
        if keys:
            problems.append(f"{len(keys)} {what} ({'; '.join(keys[:3])}{'; ...' if len(keys) > 3 else ''})")
    return problems


_closed_loop_reports_hidden = False


def _hide_closed_loop_reports():
    """After a failed restore, reads Orbax left running complete into its closed event loop, and each is reported
    as an unraisable "Event loop is closed" RuntimeError (hundreds of tracebacks): drop those reports only."""
    global _closed_loop_reports_hidden
    if _closed_loop_reports_hidden:
        return
    previous = sys.unraisablehook

    def hook(report):
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"):
            previous(report)

    sys.unraisablehook, _closed_loop_reports_hidden = hook, True


def _reason(error):
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


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

    def newest(self):
        """A sentence naming the newest checkpoint (where a re-run resumes), or saying that none was saved yet."""
        steps = self.steps()
        if not steps:
            return f"No checkpoint was saved yet in {self.directory}: re-running starts from step 0"
        return f"The newest good checkpoint is step {steps[-1]} in {self.directory}"

    def save(self, step, state, data_iterator, config):
        """Starts saving checkpoint `step` (returns once the arrays are copied off the device; the write goes on
        in the background). `config` is a JSON-able dict. A state holding NaN or Inf is never saved:
        NonFiniteStateError names its arrays."""
        bad = nonfinite_arrays(state)
        if bad:
            raise NonFiniteStateError(
                f"the state after step {step} has NaN/Inf values in {len(bad)} of {len(jax.tree.leaves(state))} "
                f"arrays ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): stopping without saving. "
                f"{self.newest()}")
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
            config=ocp.args.JsonSave(config)))

    def restore(self, target, data_iterator, differences=lambda saved_config: []):
        """(step, state) from the newest checkpoint that restores, with `data_iterator` moved to its saved
        position; None when there are no checkpoints. `target`: ShapeDtypeStructs with the shardings to restore
        onto.

        A checkpoint is read only once it is known to fit: `differences(its config)` (a list of problems) must be
        empty and its arrays' names, shapes and dtypes must be those of `target`, else ResumeMismatchError, with
        nothing touched. A checkpoint that cannot be read is skipped; once an older one restores, the skipped ones
        are moved aside to `corrupt-STEP` (kept). When none restores, DamagedCheckpointsError lists them and
        nothing is touched."""
        damaged = []
        if self.steps():
            _hide_closed_loop_reports()
        for step in reversed(self.steps()):
            self._check_process_count(step)
            try:
                saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
                problems = list(differences(saved))
                problems += _structure_differences(self._manager.item_metadata(step)["state"], target)
            except Exception as e:  # an unreadable config or array index: the checkpoint is damaged
                damaged.append((step, e))
                continue
            if problems:
                raise ResumeMismatchError(
                    f"checkpoint {step} in {self.directory} does not fit this run: {'; '.join(problems)}. Nothing "
                    "was changed: resume with the checkpoint's settings, use another workdir, or pass "
                    "on_mismatch=start_over to move the previous run aside and start at step 0")
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)))
            except Exception as e:  # any unreadable part makes the whole checkpoint unusable
                damaged.append((step, e))
                continue
            for bad, error in damaged:
                print(f"WARNING: checkpoint {bad} in {self.directory} is unreadable ({_reason(error)}); moved it "
                      f"aside, resuming from checkpoint {step}", file=sys.stderr, flush=True)
                self._move_aside(bad)
            return step, restored["state"]
        if damaged:
            listing = "; ".join(f"checkpoint {step}: {_reason(e)}" for step, e in damaged)
            raise DamagedCheckpointsError(
                f"none of the {len(damaged)} checkpoints in {self.directory} can be read ({listing}). Nothing was "
                "changed: move them away (or use another workdir) to start over, or pass on_mismatch=start_over "
                "to have them moved aside")
        return None

    def _check_process_count(self, step):
        data = os.path.join(self.directory, str(step), "data")
        saved = [f for f in os.listdir(data) if f.startswith("process_")] if os.path.isdir(data) else []
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if saved and mine not in saved:
            raise ProcessCountError(f"checkpoint {step} in {self.directory} was saved by a run with a different number "
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
