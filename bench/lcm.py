"""PixArt-δ's speed-up: seconds per image of LCM 4 steps (no CFG) vs DPM-Solver 20 steps with CFG 4.5, end to end
(T5, transformer, VAE), for our PixArtPipeline and for diffusers' PixArtAlphaPipeline on the same random weights
in the same process (bench/pipelines.py), then each stage alone.

  python bench/lcm.py [--size 256] [--layers 2] [--runs 2] [--full]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402

from bench.pipelines import arguments, time_samplers  # noqa: E402
from pixart_jax.samplers import from_scheduler_config  # noqa: E402


def lcm(config):
    scheduler = diffusers.LCMScheduler.from_config(config)
    return scheduler, from_scheduler_config(dict(scheduler.config))


def main():
    args = arguments(__doc__)
    (_, dpm_ours, dpm_ref), (_, lcm_ours, lcm_ref) = time_samplers(args, (
        ("DPM-Solver++ 20 steps, CFG 4.5", 20, 4.5,
         lambda config: (diffusers.DPMSolverMultistepScheduler.from_config(config), from_scheduler_config(config))),
        ("LCM 4 steps, no CFG", 4, 0.0, lcm)), stages=True)
    print(f"LCM 4 vs DPM-Solver 20 + CFG: {dpm_ours / lcm_ours:.1f}x faster (ours), {dpm_ref / lcm_ref:.1f}x faster "
          f"(diffusers); ours LCM 4 vs diffusers DPM 20 + CFG: {dpm_ref / lcm_ours:.1f}x")


if __name__ == "__main__":
    main()
