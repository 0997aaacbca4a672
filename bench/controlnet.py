"""PixArt-δ ControlNet-Transformer at XL/2 size (28 base blocks, 13 copies), fp32, same run.

  python bench/controlnet.py [--sizes 256] [--batch 2] [--runs 3] [--steps 3] [--base-step]

Forward: the jitted ControlNet with control latents vs the base PixArt-XL-2-1024-MS alone (same weights; median of
interleaved calls, compilation excluded); 13 extra blocks are +46 % of the blocks' FLOPs, so expect about 1.5x.
Train step: the ControlNet's step (PixArt loss, AdamW on the copies and zero linears only, frozen base), with
--base-step also the base's pre-training step (all parameters trained, EMA; about 12 GiB at XL/2), each in its own
subprocess so each peak RSS is its own.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import print_table, timed_pair  # noqa: E402
from bench.forward import forward_gflop  # noqa: E402
from bench.train_step import make_batch, time_steps  # noqa: E402

PRESET = "PixArt-XL-2-1024-MS"
COPIES = 13


def build(seed=0):
    """(base, controlnet): a random XL/2 base and its ControlNet with every zero linear drawn at random."""
    import jax
    from flax import nnx

    from pixart_jax.models.controlnet import PixArtControlNet
    from pixart_jax.models.transformer import PixArtTransformer
    from pixart_jax.models.transformer_config import PRESETS

    base = PixArtTransformer(PRESETS[PRESET], rngs=nnx.Rngs(seed))
    controlnet = PixArtControlNet(base, COPIES)
    for module in (controlnet.before_proj, controlnet.after_proj):
        kernel = module.kernel
        kernel[...] = 0.02 * jax.random.normal(jax.random.key(seed), kernel.shape)
    return base, controlnet


def forward_rows(args):
    import jax
    from flax import nnx

    base, controlnet = build()
    graphdef, state = nnx.split(controlnet)
    base_def, base_state = nnx.split(base)
    with_control = jax.jit(lambda s, *a, control: nnx.merge(graphdef, s)(*a, control=control))
    alone = jax.jit(lambda s, *a: nnx.merge(base_def, s)(*a))
    rows = []
    for size in args.sizes:
        batch = make_batch(args.batch, size)
        rng = np.random.default_rng(size)
        x = rng.standard_normal(batch["mean"].shape).astype(np.float32)
        c = rng.standard_normal(batch["mean"].shape).astype(np.float32)
        t = np.linspace(999, 1, args.batch).astype(np.float32)
        inputs = (x, t, batch["caption"], batch["mask"], batch["img_hw"], batch["aspect_ratio"])
        (_, ours), (_, ref) = timed_pair(lambda: with_control(state, *inputs, control=c),
                                         lambda: alone(base_state, *inputs), args.runs)
        lat = size // 8
        cfg = base.cfg
        block_share = COPIES / cfg.depth
        gflop = forward_gflop(cfg, args.batch, lat, lat)
        rows.append([f"{size}x{size} ({lat}x{lat} latent)", args.batch, f"{ref:.2f}", f"{ours:.2f}",
                     f"{ours / ref:.2f}x", f"{1 + block_share:.2f}x",
                     f"{gflop / ref:.0f} / {gflop * (1 + block_share) / ours:.0f}"])
    return rows


def run_step(args):
    """Seconds per train step (median after a warm-up) of the ControlNet (`--side controlnet`) or the base."""
    import jax

    from pixart_jax.sharding import device_batch, make_mesh
    from pixart_jax.training import config, controlnet, pretraining

    overrides = ["workdir=unused", "steps=1", "checkpoint_every=1", "seed=0", f"model.preset={PRESET}",
                 "optimizer.warmup_steps=0", f"data.batch_size={args.batch}"]
    if args.side == "controlnet":
        program = controlnet.ControlNetTraining(controlnet.load_config(None, [*overrides,
                                                                              f"controlnet.copies={COPIES}"]))
    else:
        program = pretraining.Pretraining(config.load_config(None, overrides))
    mesh = make_mesh(1, 1, jax.devices()[:1])
    model = program.model()  # as build(): seed 0
    batch = make_batch(args.batch, args.sizes[0])
    batch.update(control_mean=batch["mean"] * 0.5, control_std=batch["std"])
    with jax.set_mesh(mesh):
        train_step = program.step(model, mesh)
        state, _ = program.state(model, mesh, donate=True)  # XL/2 is not held twice
        del model
        if args.side != "controlnet":
            batch = {k: v for k, v in batch.items() if not k.startswith("control")}
        batch = device_batch(batch, mesh)
        holder = [state]

        def step():
            holder[0], metrics = train_step(holder[0], batch)
            jax.block_until_ready(metrics)
        return time_steps(step, args.steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="image sizes (latent = /8); the train "
                                                                             "step uses the first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per model")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps after one warm-up step")
    parser.add_argument("--base-step", action="store_true", help="also time the base's full pre-training step")
    parser.add_argument("--side", choices=["controlnet", "base"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        start = time.perf_counter()
        seconds = run_step(args)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(json.dumps({"seconds": seconds, "peak_gib": peak_gib, "total_s": time.perf_counter() - start}))
        return
    results = {}  # the train steps first, while this process holds no XL/2 model
    for side in ("controlnet", "base") if args.base_step else ("controlnet",):
        run = subprocess.run([sys.executable, __file__, "--side", side, "--batch", str(args.batch), "--steps",
                              str(args.steps), "--sizes", str(args.sizes[0])], capture_output=True, text=True)
        if run.returncode:  # e.g. killed for memory: the forward table still comes
            print(f"{side} train step failed (exit {run.returncode}): {run.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        results[side] = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"{PRESET} + ControlNet ({COPIES} copies), fp32, {os.cpu_count()} cores")
    print_table(["image", "batch", "base s", "ControlNet s", "ratio", "FLOP ratio", "GFLOP/s base / ControlNet"],
                forward_rows(args))
    size = args.sizes[0]
    print(f"\ntrain step at {size}x{size} px, batch {args.batch}, median of {args.steps} steps after a warm-up")
    names = {"controlnet": "ControlNet (copies + zero linears trained)", "base": "base pre-training (all, EMA)"}
    rows = [[names[side], f"{r['seconds']:.2f}", f"{args.batch / r['seconds']:.3f}", f"{r['peak_gib']:.1f}"]
            for side, r in results.items()]
    print_table(["step", "s/step", "images/s", "peak RSS GiB"], rows)


if __name__ == "__main__":
    main()
