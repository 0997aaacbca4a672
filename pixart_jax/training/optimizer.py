"""The optimizer every train step updates its networks with (PixArt-alpha `train_scripts/train.py`: global-norm
clipping, AdamW, linear warmup, optional √batch lr scaling, gradient accumulation; PixArt-Σ: CAME instead of
AdamW)."""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from pixart_jax.choices import OptimizerName
from pixart_jax.optim import came


def peak_learning_rate(opt_cfg, global_batch):
    """The configured lr, times √(global batch · accumulation / 256) when sqrt scaling is on (spec §3.3)."""
    if not opt_cfg.sqrt_lr_scaling:
        return opt_cfg.lr
    return opt_cfg.lr * math.sqrt(global_batch * opt_cfg.grad_accum_steps / 256)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation, its lr schedule (of the optimizer step, for the metrics) and how many micro-steps
    accumulate into one optimizer step."""
    tx: optax.GradientTransformation
    schedule: Callable
    accum_steps: int = 1

    def update(self, loss_fn, params, opt, average, rate, step, has_aux=False):
        """One update of `params` by the gradient of `loss_fn`, then the moving average `average` (EMA / LCD
        target; None: none kept) pulled towards the new params by (1 - rate) on micro-steps that complete an
        accumulated update. With `has_aux` loss_fn returns (loss, {name: scalar}) and the scalars join the metrics.
        Returns (params, opt, average, metrics)."""
        if has_aux:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        else:
            (loss, grads), aux = jax.value_and_grad(loss_fn)(params), {}
        updates, opt = self.tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        applied = (step + 1) % self.accum_steps == 0
        if average is not None:
            average = jax.tree.map(lambda a, p: jnp.where(applied, rate * a + (1 - rate) * p, a), average, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(step // self.accum_steps),
                   **aux}
        return params, opt, average, metrics


def base_optimizer(opt_cfg, schedule):
    """AdamW or CAME (`opt_cfg.name`) with the learning rate `schedule`."""
    if opt_cfg.name == OptimizerName.came:
        return came(schedule, betas=(opt_cfg.b1, opt_cfg.b2, opt_cfg.b3), eps=tuple(opt_cfg.came_eps),
                    clip_threshold=opt_cfg.clip_threshold, weight_decay=opt_cfg.weight_decay)
    return optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)


def make_optimizer(opt_cfg, global_batch) -> Optimizer:
    """Global-norm clip then AdamW (or CAME: `opt_cfg.name`) with lr · min(1, k / warmup) at optimizer step k,
    wrapped in optax.MultiSteps when gradients are accumulated over several micro-batches.

    Warmup counts optimizer steps. (Under accelerate the reference ticks its scheduler once per process per step,
    finishing warmup after warmup / world_size steps, spec §3.9 quirk 14: set warmup_steps accordingly to match.)
    Weight decay applies to every parameter, biases and tables included, as torch's AdamW over all parameters."""
    peak = peak_learning_rate(opt_cfg, global_batch)
    warmup = opt_cfg.warmup_steps

    def schedule(count):
        if warmup == 0:
            return jnp.full((), peak, jnp.float32)
        return peak * jnp.minimum(1.0, jnp.asarray(count, jnp.float32) / warmup)

    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), base_optimizer(opt_cfg, schedule))
    if opt_cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=opt_cfg.grad_accum_steps)
    return Optimizer(tx, schedule, opt_cfg.grad_accum_steps)
