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
from pixart_jax.training.data import feature_dataset, read_examples
from pixart_jax.training.errors import RunError
from pixart_jax.training.metrics import MetricsWriter
from pixart_jax.training.samples import SampleGrid, save_png
from pixart_jax.training.step import TrainStep, abstract_state, build_model, init_state, make_optimizer, split_model
from pixart_jax.training.synthetic import synthetic_examples
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


def check_data_source(source):
    """A ConfigError unless `data.source` is "synthetic" or a records directory that can be read."""
    if source == "synthetic":
        return
    try:
        read_examples(source)
    except (OSError, ValueError) as e:
        raise config_lib.ConfigError(f"data.source {source}: {e}") from None


def data_source(cfg, model_cfg):
    """A records directory, or generated examples (`data.source: synthetic`) sized for the model."""
    if cfg.data.source != "synthetic":
        return cfg.data.source
    return synthetic_examples(cfg.data.synthetic_examples, seed=cfg.seed, caption_channels=model_cfg.caption_channels,
                              max_tokens=model_cfg.max_tokens, buckets=tuple(cfg.data.synthetic_buckets))


class Pretraining:
    """What `train` trains by default: a PixArtTransformer, step.py's state (params, EMA) and TrainStep, on the
    configured data. Another objective (e.g. distill.py, controlnet.py) subclasses it, replaces what differs and
    reuses the whole loop. Instances are made for one config (`Pretraining(cfg)`); the class works too."""
    abstract_state = staticmethod(abstract_state)
    init_state = staticmethod(init_state)
    data_source = staticmethod(data_source)

    def __init__(self, cfg=None):
        self.cfg = cfg

    @staticmethod
    def build_model(cfg):
        return build_model(cfg.model, cfg.seed)

    @staticmethod
    def make_step(cfg, graphdef, tx, schedule, shardings, mesh):
        return TrainStep(graphdef, tx, schedule, shardings, mesh, accum_steps=cfg.optimizer.grad_accum_steps,
                         ema_rate=cfg.optimizer.ema_rate, caption_dropout=cfg.model.caption_dropout,
                         latent_scale=cfg.data.latent_scale, prediction_type=cfg.model.prediction_type)


def train(cfg: config_lib.TrainConfig, examples=None, program=Pretraining) -> RunResult:
    """Runs or resumes the run `cfg` (a TrainConfig) describes. `examples` replaces the configured data source
    (a sequence of example dicts); `program` supplies the model, data, state and step (see `Pretraining`). The
    workdir and data source are checked before anything is built, and the workdir is locked while the run uses it."""
    initialize_distributed(cfg.distributed)
    workdir = check_workdir(cfg.workdir)
    if examples is None:
        check_data_source(cfg.data.source)
    mesh = config_lib.make_mesh(cfg.mesh)
    if cfg.data.batch_size % mesh.size or cfg.data.batch_size % jax.process_count():
        raise config_lib.ConfigError(f"data.batch_size {cfg.data.batch_size} must be divisible by the {mesh.size} "
                                     f"devices and the {jax.process_count()} processes")
    with locked(workdir, enabled=jax.process_index() == 0):
        return _run(cfg, workdir, examples, program, mesh)


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


def _run(cfg, workdir, examples, program, mesh):
    proc0 = jax.process_index() == 0
    global_batch, accum = cfg.data.batch_size, cfg.optimizer.grad_accum_steps

    model = program.build_model(cfg)
    model_cfg = model.cfg
    graphdef, _, _ = split_model(model)
    tx, schedule = make_optimizer(cfg.optimizer, global_batch)
    rules = dict(cfg.mesh.rules)

    dataset = feature_dataset(program.data_source(cfg, model_cfg) if examples is None else examples,
                              batch_size=global_batch // jax.process_count(), seed=cfg.seed,
                              shard_index=jax.process_index(), shard_count=jax.process_count())
    iterator = iter(dataset)

    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.checkpoint.max_to_keep,
                        async_save=cfg.checkpoint.async_save)
    with jax.set_mesh(mesh):
        target, shardings = program.abstract_state(model, tx, cfg.seed, mesh, rules)
        ckpts, start, state = _resume(cfg, workdir, ckpts, target, iterator)
        if state is None:  # a fresh iterator: a checkpoint that failed to restore may have moved this one
            iterator, (state, _) = iter(dataset), program.init_state(model, tx, cfg.seed, mesh, rules)
        del model, target
        if proc0:  # only once the config is valid and the run resumed (or starts)
            write_text(os.path.join(workdir, "config.yaml"), config_lib.to_yaml(cfg))
        train_step = program.make_step(cfg, graphdef, tx, schedule, shardings, mesh)
        writer = MetricsWriter(workdir, enabled=proc0, start_step=start, tb_every=cfg.logging.log_every)
        preemption = Preemption(cfg.checkpoint.preemption_check_every)
        bar = tqdm(total=cfg.steps, initial=start, disable=not (proc0 and cfg.logging.progress), unit="step")
        losses, grids = {}, None
        pending, clock = None, [time.perf_counter()]

        def flush():
            """Fetches the pending step's metrics (one step late, so the host never waits on the device)."""
            nonlocal pending
            step, micro = pending
            pending = None
            host = jax.device_get(micro)
            loss = float(np.mean([m["loss"] for m in host]))
            grad_norm = float(np.mean([m["grad_norm"] for m in host]))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"loss is {loss} (gradient norm {grad_norm}) at step {step}: stopping without saving. "
                    f"{ckpts.newest()}")
            now = time.perf_counter()
            steps_per_s = 1.0 / max(now - clock[0], 1e-9)
            clock[0] = now
            losses[step] = loss
            extra = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in ("loss", "grad_norm", "lr")}
            writer.write(step, {"loss": loss, "lr": float(host[-1]["lr"]), "grad_norm": grad_norm,
                                "steps_per_s": steps_per_s, "images_per_s": steps_per_s * global_batch * accum,
                                **extra})
            bar.set_postfix(loss=f"{loss:.4f}")

        try:
            for step in range(start, cfg.steps):
                micro = []
                for _ in range(accum):
                    batch = sharding.device_batch(next(iterator), mesh)
                    if grids is None and cfg.sample.every:  # captions of this run's first batch
                        grids = SampleGrid(graphdef, cfg.sample, batch, mesh, cfg.seed, cfg.data.latent_scale,
                                           cfg.model.prediction_type)
                    state, metrics = train_step(state, batch)
                    micro.append(metrics)
                if pending is not None:
                    flush()
                pending, done = (step + 1, micro), step + 1
                bar.update(1)
                preempted = preemption.requested(done)
                if done % cfg.checkpoint_every == 0 or done == cfg.steps or preempted:
                    flush()  # a state is saved only once its loss is known to be finite
                    ckpts.save(done, state, iterator, config_lib.to_dict(cfg))
                    writer.flush()  # what TensorBoard shows survives a kill as far as the checkpoint
                if grids is not None and done % cfg.sample.every == 0:
                    grid = grids.grid(state)
                    if proc0:
                        save_png(grid, os.path.join(workdir, "samples", f"step_{done:07d}.png"))
                        writer.image(done, "samples", grid)
                if preempted:
                    print(f"{preemption.name}: saved checkpoint {done} in {ckpts.directory}; exiting", flush=True)
                    break
            else:
                preempted = False
            if pending is not None:
                flush()
        finally:
            bar.close()
            preemption.restore()
            ckpts.close()
            writer.close()
    return RunResult(step=int(jax.device_get(state["step"])) // accum, losses=losses, state=state,
                     graphdef=graphdef, traces=train_step.traces, preempted=preempted)
