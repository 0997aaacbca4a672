"""PixArt-Σ 1024-MS on this CPU, ours vs diffusers on the same random weights in the same process: the Σ
XL/2-1024-MS transformer forward (300 caption tokens, position interpolation 2, no micro-conditions) at a reduced
depth, then the pipeline (diffusers' PixArtSigmaPipeline vs our PixArtPipeline on its folder: T5 at XXL width,
DPM-Solver++ 4 steps with CFG 4.5, at the same size) to the latents. Prints the CPU (model, vector extensions)
first.

The default size is 768²; at 1024² (4096 tokens) XLA:CPU materialises the self-attention scores (1 GiB per copy
for 16 heads in fp32): the run's peak RSS is about 10 GB at 2 blocks.

  python bench/sigma.py [--size 768] [--layers 2] [--t5-layers 1] [--runs 2] [--full]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402
import torch  # noqa: E402

from bench.common import print_table, timed_pair  # noqa: E402
from bench.forward import HEADER, forward_calls, forward_row, matmul_rates, random_pair  # noqa: E402
from bench.pipelines import arguments, time_samplers  # noqa: E402
from pixart_jax.models.transformer_config import PRESETS  # noqa: E402
from pixart_jax.samplers import from_scheduler_config  # noqa: E402


def dpm(config):
    return diffusers.DPMSolverMultistepScheduler.from_config(config), from_scheduler_config(config)


def main():
    args = arguments(__doc__, size=768, t5_layers=1)
    torch.manual_seed(0)
    cfg = PRESETS["PixArt-Sigma-XL-2-1024-MS"].replace(depth=28 if args.full else args.layers)
    rates = matmul_rates()
    print(f"PixArt-Sigma-XL-2-1024-MS transformer, {cfg.depth} of its 28 blocks, fp32, {cfg.max_tokens} tokens, "
          f"median of {args.runs}:")
    calls = forward_calls(cfg, random_pair(cfg), size=args.size, batch=1)
    (_, ours_s), (_, ref_s) = timed_pair(*calls, args.runs)
    del calls  # both models: the pipeline below needs the memory
    print_table(HEADER, [forward_row(cfg, rates, (ours_s, ref_s), size=args.size, batch=1)])
    time_samplers(args, (("DPM-Solver++ 4 steps, CFG 4.5", 4, 4.5, dpm),), sigma=True)


if __name__ == "__main__":
    main()
