"""Where the SD-VAE decode time goes, ours (XLA) vs PyTorch, same process: the whole decode, then its convolutions
alone at each shape the decoder runs (3x3, stride 1) in the layouts each framework can use, and its GroupNorm +
SiLU. The ratio of the convolution rates is the limit a JAX decode can reach on this CPU without a faster
convolution in XLA.

    python bench/vae_decode.py [--size 256] [--runs 5]
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import print_table, timed_pair  # noqa: E402
from bench.encoders import bench_vae_decode  # noqa: E402


def conv_shapes(size):
    """(channels in, channels out, side) of the SD decoder's 3x3 convolutions at an output side of `size`,
    with how many of each run."""
    s = size // 8
    return [((512, 512, s), 10), ((512, 512, 2 * s), 7), ((512, 512, 4 * s), 1), ((512, 256, 4 * s), 1),
            ((256, 256, 4 * s), 5), ((256, 256, 8 * s), 1), ((256, 128, 8 * s), 1), ((128, 128, 8 * s), 5)]


def conv_rows(size, runs):
    rows = []
    rng = np.random.default_rng(0)
    for (cin, cout, side), count in conv_shapes(size):
        x = rng.standard_normal((1, side, side, cin)).astype(np.float32)
        w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32) * 0.02
        conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"))
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        tx_last = tx.contiguous(memory_format=torch.channels_last)
        flops = 2 * side * side * cin * cout * 9 / 1e9
        with torch.inference_mode():
            (_, ours), (_, theirs) = timed_pair(lambda: conv(jx, jw),
                                                lambda: torch.nn.functional.conv2d(tx, tw, padding=1), runs)
            (_, _), (_, last) = timed_pair(lambda: conv(jx, jw),
                                           lambda: torch.nn.functional.conv2d(tx_last, tw, padding=1), runs)
        rows.append([f"conv3x3 {cin}->{cout} at {side}x{side} (x{count})", f"{flops / ours:.0f}",
                     f"{flops / theirs:.0f}", f"{flops / last:.0f}", f"{ours / theirs:.2f}", f"{count * ours:.3f}",
                     f"{count * theirs:.3f}"])
    return rows


def norm_rows(size, runs):
    rng = np.random.default_rng(0)
    side, channels = size // 2, 256
    x = rng.standard_normal((1, side, side, channels)).astype(np.float32)

    def group_norm_silu(x):
        g = x.reshape(1, side, side, 32, channels // 32)
        mean = g.mean((1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean((1, 2, 4), keepdims=True)
        return jax.nn.silu(((g - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(x.shape))

    ours = jax.jit(group_norm_silu)
    norm = torch.nn.GroupNorm(32, channels, eps=1e-6)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    jx = jnp.asarray(x)
    with torch.inference_mode():
        (_, o), (_, t) = timed_pair(lambda: ours(jx), lambda: torch.nn.functional.silu(norm(tx)), runs)
    return [[f"GroupNorm(32) + SiLU, {channels} ch at {side}x{side}", f"{o * 1e3:.1f} ms", f"{t * 1e3:.1f} ms",
             f"{o / t:.2f}"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="output image side")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as vae_dir:
        (name, (_, ours), (_, theirs)), = bench_vae_decode(vae_dir, (args.size,), args.runs)
    print(f"\n{jax.devices()[0].platform} / torch {torch.__version__} ({torch.get_num_threads()} threads), fp32, "
          f"median of {args.runs} interleaved runs\n")
    print_table(["whole decode", "ours s", "PyTorch s", "PyTorch / ours"],
                [[name, f"{ours:.3f}", f"{theirs:.3f}", f"{theirs / ours:.2f}"]])
    print()
    print_table(["convolution", "XLA NHWC GFLOP/s", "torch NCHW GFLOP/s", "torch channels-last GFLOP/s",
                 "XLA / torch time", "XLA s (all)", "torch s (all)"], conv_rows(args.size, args.runs))
    print()
    print_table(["elementwise", "XLA", "torch", "XLA / torch time"], norm_rows(args.size, args.runs))


if __name__ == "__main__":
    main()
