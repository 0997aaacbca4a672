"""One training step of a LoRA fine-tune vs a full fine-tune of the same base, on this CPU: XL/2 widths with a few
blocks (default 4 of 28), 256 px, batch 2, fp32, one device.

  python bench/lora.py [--layers 4] [--batch 2] [--steps 3] [--rank 4]

Both are train.pretrain's programs on one random base written once (model.init_from): the full fine-tune trains
every weight with AdamW and an EMA; the LoRA fine-tune (the PixArt LoRA script's targets, rank 4, lora_alpha 8)
trains the adapters alone, the base frozen. Each runs in its own subprocess (its peak RSS its own); the table gives
the trained parameters, the train state's size, XLA's buffers for the compiled step (arguments, temporaries), peak
RSS, and seconds per step (median after one warm-up step).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_table  # noqa: E402
from bench.train_step import make_batch, timed_program  # noqa: E402

PRESET = "PixArt-XL-2-256x256"
GIB = 2 ** 30


def write_base(path, layers):
    """A random XL/2 base of `layers` blocks saved in our format (every parameter drawn: no zero output layer)."""
    from flax import nnx

    from pixart_jax.models.transformer import PixArtTransformer
    from pixart_jax.models.transformer_config import PRESETS
    from pixart_jax.testing.random_weights import redraw_nnx
    from pixart_jax.weights.transformer import save_jax

    save_jax(redraw_nnx(PixArtTransformer(PRESETS[PRESET].replace(depth=layers), rngs=nnx.Rngs(0)), 0), path)


def state_bytes(tree):
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def run_side(args):
    """{seconds, trained, state_gib, arguments_gib, temporaries_gib} of one program's step."""
    import jax

    from pixart_jax.training.config import load_config
    from pixart_jax.training.pretraining import program

    lora = [f"lora.rank={args.rank}", "lora.alpha=8", "sample.every=0"] if args.side == "lora" else []
    cfg = load_config(None, ["workdir=unused", "steps=1", "checkpoint_every=1", "seed=0", f"model.preset={PRESET}",
                             f"model.init_from={args.base}", "optimizer.warmup_steps=0",
                             f"data.batch_size={args.batch}", *lora])

    def measure(train_step, state, batch):
        memory = train_step.lower(state, batch).compile().memory_analysis()
        return dict(trained=sum(leaf.size for leaf in jax.tree.leaves(state["params"])),
                    state_gib=state_bytes(state) / GIB, arguments_gib=memory.argument_size_in_bytes / GIB,
                    temporaries_gib=memory.temp_size_in_bytes / GIB)

    seconds, found = timed_program(program(cfg), make_batch(args.batch, args.size), args.steps, measure)
    return dict(found, seconds=seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (XL/2 has 28)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--size", type=int, default=256, help="image size (latent = size / 8)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (lora_alpha 8)")
    parser.add_argument("--side", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        start = time.perf_counter()
        result = run_side(args)
        result.update(peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                      total_s=time.perf_counter() - start)
        print(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        write_base(base, args.layers)
        for side in ("full", "lora"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--base", base, "--batch", str(args.batch),
                                  "--steps", str(args.steps), "--size", str(args.size), "--rank", str(args.rank)],
                                 capture_output=True, text=True, check=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
    print(f"{PRESET} widths, {args.layers} blocks, train step, fp32, {args.size}x{args.size} px, batch {args.batch}, "
          f"median of {args.steps} steps after a warm-up, {os.cpu_count()} cores")
    rows = [[name, f"{r['trained'] / 1e6:.2f}", f"{r['state_gib']:.2f}", f"{r['arguments_gib']:.2f}",
             f"{r['temporaries_gib']:.2f}", f"{r['peak_gib']:.2f}", f"{r['seconds']:.2f}",
             f"{args.batch / r['seconds']:.3f}"]
            for name, r in (("full fine-tune", results["full"]), (f"LoRA rank {args.rank}", results["lora"]))]
    ratio = lambda key, fmt=".2f": f"{results['full'][key] / results['lora'][key]:{fmt}}x"  # noqa: E731
    rows.append(["ratio full/LoRA", ratio("trained", ".0f"), ratio("state_gib"), ratio("arguments_gib"),
                 ratio("temporaries_gib"), ratio("peak_gib"), ratio("seconds"), ""])
    print_table(["run", "trained M", "state GiB", "XLA args GiB", "XLA temps GiB", "peak RSS GiB", "s/step",
                 "images/s"], rows)


if __name__ == "__main__":
    main()
