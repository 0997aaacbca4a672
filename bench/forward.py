"""Forward pass of PixArt-XL-2-1024-MS: our jitted JAX model vs diffusers' PyTorch model, same weights, fp32.

  python bench/forward.py [--sizes 256 512] [--batch 2] [--runs 3]

Prints seconds per forward
(median of interleaved calls, compilation excluded), the ratio, and achieved GFLOP/s against the
measured 4096^2 matmul rate of each framework on this machine.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import PixArtTransformer2DModel  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import cpu_description, matmul_gflops, print_table, timed_pair  # noqa: E402
from pixart_jax.models.transformer_config import PRESETS  # noqa: E402
from pixart_jax.weights.transformer import load_transformer  # noqa: E402


def forward_gflop(cfg, batch, h, w, tokens=120):
    """Matmul FLOPs of one forward (the rest is negligible): blocks, caption projection, embedders."""
    n, d, L = (h // cfg.patch_size) * (w // cfg.patch_size), cfg.hidden_size, tokens
    block = (2 * n * d * 3 * d + 2 * n * d * d + 4 * n * n * d          # self-attention
             + 2 * n * d * d + 2 * L * d * 2 * d + 4 * n * L * d + 2 * n * d * d  # cross-attention
             + 2 * 2 * n * d * cfg.mlp_hidden)                              # MLP
    other = 2 * L * (cfg.caption_channels * d + d * d) + 2 * n * d * cfg.patch_size ** 2 * (cfg.in_channels
                                                                                           + cfg.out_channels)
    return batch * (cfg.depth * block + other) / 1e9


def random_pair(cfg):
    """(diffusers PixArtTransformer2DModel with N(0, 0.02) weights, our jitted forward, our state): the same
    weights on both sides."""
    config = cfg.to_diffusers()
    config.pop("_class_name")
    ref = PixArtTransformer2DModel(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = load_transformer(tmp)
    graphdef, state = nnx.split(ours)
    return ref, jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)), state


def forward_calls(cfg, pair, *, size, batch):
    """(our forward, diffusers' forward): `batch` size × size images with cfg.max_tokens caption tokens,
    micro-conditions where the model takes them, the same inputs both sides."""
    ref, forward, state = pair
    rng = np.random.default_rng(size)
    lat = size // 8
    x = rng.standard_normal((batch, 4, lat, lat)).astype(np.float32)
    t = np.array([999.0, 500.0] * batch, np.float32)[:batch]
    y = rng.standard_normal((batch, cfg.max_tokens, cfg.caption_channels)).astype(np.float32)
    mask = np.ones((batch, cfg.max_tokens), np.float32)
    res = np.full((batch, 2), size, np.float32) if cfg.micro_conditions else None
    ar = np.ones((batch, 1), np.float32) if cfg.micro_conditions else None
    tt = [None if a is None else torch.from_numpy(a) for a in (x, t, y, mask, res, ar)]
    added = {"resolution": tt[4], "aspect_ratio": tt[5]} if cfg.micro_conditions else None

    def torch_forward():
        with torch.no_grad():
            return ref(tt[0], encoder_hidden_states=tt[2], timestep=tt[1], encoder_attention_mask=tt[3],
                       added_cond_kwargs=added).sample
    return (lambda: forward(state, x, t, y, mask, res, ar)), torch_forward


def forward_row(cfg, rates, seconds, *, size, batch):
    """One table row of (ours, diffusers) `seconds` per forward of `batch` size × size images."""
    (ours_s, ref_s), (jax_rate, torch_rate) = seconds, rates
    gflop = forward_gflop(cfg, batch, size // 8, size // 8, tokens=cfg.max_tokens)
    return [f"{size}x{size} ({size // 8}x{size // 8} latent)", batch, f"{ours_s:.2f}",
            f"{ref_s:.2f}", f"{ref_s / ours_s:.2f}x", f"{gflop / ours_s:.0f} ({gflop / ours_s / jax_rate:.0%})",
            f"{gflop / ref_s:.0f} ({gflop / ref_s / torch_rate:.0%})"]


HEADER = ["image", "batch", "ours s", "diffusers s", "speed-up (ref/ours)", "ours GFLOP/s (of matmul)",
          "diffusers GFLOP/s (of matmul)"]


def matmul_rates():
    """(JAX, PyTorch) fp32 matmul GFLOP/s on this machine, printed with the CPU."""
    rates = matmul_gflops()
    print(f"{cpu_description()}\n4096^2 fp32 matmul: JAX {rates[0]:.0f} GFLOP/s, PyTorch {rates[1]:.0f} GFLOP/s "
          f"({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)")
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (latent = /8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = PRESETS["PixArt-XL-2-1024-MS"]
    pair, rates = random_pair(cfg), matmul_rates()
    rows = []
    for size in args.sizes:
        (_, ours_s), (_, ref_s) = timed_pair(*forward_calls(cfg, pair, size=size, batch=args.batch), args.runs)
        rows.append(forward_row(cfg, rates, (ours_s, ref_s), size=size, batch=args.batch))
    print_table(HEADER, rows)


if __name__ == "__main__":
    main()
