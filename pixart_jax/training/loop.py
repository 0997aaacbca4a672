"""The training loop every program shares (`python -m train.pretrain`, `train.lcm`, ...).

Reads top to bottom: hosts -> config, workdir, data source and mesh checks -> the workdir lock -> model and train
state -> data -> resume from the newest checkpoint in WORKDIR (refusing one saved with other settings) -> the loop.
Re-running the same command on the same workdir resumes the run exactly (weights, optimizer, EMA, RNG and data
order). SIGTERM or SIGINT (Ctrl-C) saves a checkpoint and exits; a non-finite loss or state stops the run without
saving, so the last good checkpoint stays the newest.
"""
import dataclasses
import math
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from pixart_jax import sharding
from pixart_jax.training import config as config_lib
from pixart_jax.training.checkpoints import Checkpoints, DamagedCheckpointsError, ResumeMismatchError
from pixart_jax.training.data import CaptionError, feature_dataset, read_examples
from pixart_jax.training.errors import RunError
from pixart_jax.training.metrics import MetricsWriter
from pixart_jax.training.samples import SampleGrid, save_png
from pixart_jax.training.state import split_model
from pixart_jax.training.workdir import check_workdir, locked, move_run_aside, write_text


@dataclasses.dataclass
class RunResult:
    """What `train` returns: the optimizer step reached, this invocation's losses {step: loss}, the final train
    state (global arrays) and model graphdef, how often the step was traced, and whether SIGTERM stopped it."""
    step: int
    losses: dict
    state: dict
    graphdef: object
    traces: int
    preempted: bool


class NonFiniteLossError(RunError):
    """The loss or gradient became NaN/Inf; nothing after the last good checkpoint was saved."""


class Preemption:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a request to save and stop. Several processes agree on it at a step
    boundary every `check_every` steps (a host round trip that waits for the step in flight)."""

    def __init__(self, check_every=1):
        self._flag, self._check_every = False, check_every
        self.name = "a stop signal to another process"   # the signal's name once this process gets one
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self._flag, self.name = True, signal.Signals(signum).name

    def requested(self, step):
        if jax.process_count() == 1:
            return self._flag
        if step % self._check_every:
            return False
        return bool(multihost_utils.process_allgather(np.int32(self._flag)).any())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def initialize_distributed(dist):
    """jax.distributed.initialize from the config (explicit coordinator, or auto-detected cluster)."""
    if dist.coordinator:
        jax.distributed.initialize(dist.coordinator, dist.num_processes, dist.process_id)
    elif dist.auto:
        jax.distributed.initialize()
    if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
        # JAX 0.12: a multi-process CPU step read back from the persistent compilation cache hangs in its first
        # collective (compiled afresh it runs), so several CPU processes always compile.
        jax.config.update("jax_enable_compilation_cache", False)


def check_data_source(source):
    """A ConfigError unless `data.source` is "synthetic" or a records directory that can be read."""
    if source == "synthetic":
        return
    try:
        read_examples(source)
    except (OSError, ValueError) as e:
        raise config_lib.ConfigError(f"data.source {source}: {e}") from None


def train(program, examples=None) -> RunResult:
    """Runs or resumes the run of `program` (a program.Program, made from its TrainConfig `program.cfg`), which
    supplies the model, data, state and step. `examples` replaces the configured data source (a sequence of example
    dicts). The workdir and data source are checked before anything is built, and the workdir is locked while the
    run uses it."""
    cfg = program.cfg
    initialize_distributed(cfg.distributed)
    workdir = check_workdir(cfg.workdir)
    if examples is None:
        check_data_source(cfg.data.source)
    mesh = config_lib.make_mesh(cfg.mesh)
    if cfg.data.batch_size % mesh.size or cfg.data.batch_size % jax.process_count():
        raise config_lib.ConfigError(f"data.batch_size {cfg.data.batch_size} must be divisible by the {mesh.size} "
                                     f"devices and the {jax.process_count()} processes")
    with locked(workdir, enabled=jax.process_index() == 0):
        return _run(program, workdir, examples, mesh)


def _resume(cfg, workdir, ckpts, target, iterator):
    """(ckpts, start step, restored state or None) after resuming from `ckpts`; with on_mismatch=start_over, a
    previous run that cannot be resumed is moved aside (and a fresh Checkpoints returned) instead of stopping."""
    current = config_lib.to_dict(cfg)
    try:
        restored = ckpts.restore(target, iterator, lambda saved: config_lib.resume_differences(saved, current))
    except RunError as e:
        ckpts.close()
        unresumable = isinstance(e, (ResumeMismatchError, DamagedCheckpointsError))
        if not (unresumable and cfg.on_mismatch == config_lib.OnMismatch.start_over):
            raise
        if jax.process_index() == 0:
            print(f"on_mismatch=start_over: moved the previous run to {move_run_aside(workdir)} ({e})", flush=True)
        multihost_utils.sync_global_devices("workdir-moved-aside")
        return Checkpoints(ckpts.directory, max_to_keep=cfg.checkpoint.max_to_keep,
                           async_save=cfg.checkpoint.async_save), 0, None
    if restored is None:
        return ckpts, 0, None
    print(f"resumed from checkpoint {restored[0]} in {ckpts.directory}", flush=True)
    return ckpts, *restored


class Progress:
    """The host side of the steps: each optimizer step's metrics are fetched one step late (so the host never
    waits on the device), checked finite, written (metrics.jsonl, TensorBoard) with the speed since the previous
    one, and shown on the progress bar; `losses` keeps {step: loss}."""

    def __init__(self, cfg, writer, ckpts, start):
        self.cfg, self.writer, self.ckpts = cfg, writer, ckpts
        self.bar = tqdm(total=cfg.steps, initial=start, disable=not (jax.process_index() == 0 and cfg.logging.progress),
                        unit="step")
        self.losses, self._pending, self._clock = {}, None, time.perf_counter()

    def add(self, step, micro):
        """Records optimizer step `step` (its micro-steps' metrics, still on the device); reports the previous."""
        self.flush()
        self._pending = (step, micro)
        self.bar.update(1)

    def flush(self):
        """Fetches and reports the pending step's metrics, if any."""
        if self._pending is None:
            return
        (step, micro), self._pending = self._pending, None
        host = jax.device_get(micro)
        loss = float(np.mean([m["loss"] for m in host]))
        grad_norm = float(np.mean([m["grad_norm"] for m in host]))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"loss is {loss} (gradient norm {grad_norm}) at step {step}: stopping without saving. "
                f"{self.ckpts.newest()}")
        now = time.perf_counter()
        steps_per_s = 1.0 / max(now - self._clock, 1e-9)
        self._clock = now
        self.losses[step] = loss
        extra = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in ("loss", "grad_norm", "lr")}
        images = self.cfg.data.batch_size * self.cfg.optimizer.grad_accum_steps
        self.writer.write(step, {"loss": loss, "lr": float(host[-1]["lr"]), "grad_norm": grad_norm,
                                 "steps_per_s": steps_per_s, "images_per_s": steps_per_s * images, **extra})
        self.bar.set_postfix(loss=f"{loss:.4f}")


@dataclasses.dataclass
class _Session:
    """What the steps of one invocation use besides the state and the data."""
    cfg: config_lib.TrainConfig
    workdir: str
    mesh: jax.sharding.Mesh
    graphdef: object
    train_step: object
    unsaved: tuple      # state keys the checkpoints leave out (program.Program.unsaved)
    ckpts: Checkpoints
    progress: Progress
    preemption: Preemption


def _run(program, workdir, examples, mesh):
    cfg = program.cfg
    model = program.model()
    graphdef = split_model(model)[0]
    try:
        dataset = feature_dataset(program.data(model.cfg) if examples is None else examples,
                                  batch_size=cfg.data.batch_size // jax.process_count(), seed=cfg.seed,
                                  shard_index=jax.process_index(), shard_count=jax.process_count(),
                                  real_prompt_ratio=cfg.data.real_prompt_ratio, max_tokens=model.cfg.max_tokens)
    except CaptionError as e:  # features that do not fit the config: refused before anything is compiled
        raise config_lib.ConfigError(str(e)) from None
    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.checkpoint.max_to_keep,
                        async_save=cfg.checkpoint.async_save)
    with jax.set_mesh(mesh):
        ckpts, start, state, iterator = _start(program, model, mesh, workdir, ckpts, dataset)
        if jax.process_index() == 0:  # only once the config is valid and the run resumed (or starts)
            write_text(os.path.join(workdir, "config.yaml"), config_lib.to_yaml(cfg))
        train_step = program.step(model, mesh)
        del model
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, start_step=start,
                               tb_every=cfg.logging.log_every)
        session = _Session(cfg, workdir, mesh, graphdef, train_step, program.unsaved, ckpts,
                           Progress(cfg, writer, ckpts, start), Preemption(cfg.checkpoint.preemption_check_every))
        try:
            state, preempted = _steps(session, state, iterator, start)
        finally:
            session.progress.bar.close()
            session.preemption.restore()
            ckpts.close()
            writer.close()
    return RunResult(step=int(jax.device_get(state["step"])) // cfg.optimizer.grad_accum_steps,
                     losses=session.progress.losses, state=state, graphdef=graphdef, traces=train_step.traces,
                     preempted=preempted)


def _start(program, model, mesh, workdir, ckpts, dataset):
    """(ckpts, start step, state, data iterator): resumed from the newest checkpoint, or the initial state."""
    iterator = iter(dataset)
    target, _ = program.abstract_state(model, mesh)
    ckpts, start, state = _resume(program.cfg, workdir, ckpts, _saved(target, program.unsaved), iterator)
    if state is None:  # a fresh iterator: a checkpoint that failed to restore may have moved this one
        iterator, (state, _) = iter(dataset), program.state(model, mesh)
    elif program.unsaved:  # what the checkpoint left out is the model's, as in the initial state
        state = {**program.state(model, mesh)[0], **state}
    return ckpts, start, state, iterator


def _saved(state, unsaved):
    """The part of `state` a checkpoint holds."""
    return {k: v for k, v in state.items() if k not in unsaved}


def _steps(session, state, iterator, start):
    """Runs optimizer steps start+1 .. cfg.steps (saving, drawing samples, stopping on SIGTERM); returns (state,
    whether SIGTERM stopped it)."""
    cfg, grids, preempted = session.cfg, None, False
    for step in range(start, cfg.steps):
        micro = []
        for _ in range(cfg.optimizer.grad_accum_steps):
            batch = sharding.device_batch(next(iterator), session.mesh)
            if grids is None and cfg.sample.every:  # captions of this run's first batch
                grids = SampleGrid(session.graphdef, cfg.sample, batch, session.mesh, cfg.seed,
                                   cfg.data.latent_scale, cfg.model.prediction_type)
            state, metrics = session.train_step(state, batch)
            micro.append(metrics)
        done = step + 1
        session.progress.add(done, micro)
        preempted = session.preemption.requested(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or preempted:
            session.progress.flush()  # a state is saved only once its loss is known to be finite
            session.ckpts.save(done, _saved(state, session.unsaved), iterator, config_lib.to_dict(cfg))
            session.progress.writer.flush()  # what TensorBoard shows survives a kill as far as the checkpoint
        if grids is not None and done % cfg.sample.every == 0:
            _save_samples(session, grids, done, state)
        if preempted:
            print(f"{session.preemption.name}: saved checkpoint {done} in {session.ckpts.directory}; exiting",
                  flush=True)
            break
    session.progress.flush()
    return state, preempted


def _save_samples(session, grids, done, state):
    grid = grids.grid(state)
    if jax.process_index() == 0:
        save_png(grid, os.path.join(session.workdir, "samples", f"step_{done:07d}.png"))
        session.progress.writer.image(done, "samples", grid)
