"""Phased Consistency Models' speed-up: seconds per image of PCM with 1, 2 and 4 steps (no CFG: a CFG-augmented
student) vs the teacher's DPM-Solver 20 steps with CFG 4.5, end to end (T5, transformer, VAE), for our
PixArtPipeline (the "pcm" sampler: phase edges of N = 40) and for diffusers' PixArtAlphaPipeline with the
TCDScheduler config a PCM export writes (at the pipeline's eta 0 it samples the same edges), on the same random
weights in the same process (bench/pipelines.py).

  python bench/pcm.py [--size 256] [--layers 2] [--runs 2] [--full]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402

from bench.pipelines import arguments, time_samplers  # noqa: E402
from pixart_jax.samplers import PCM, from_scheduler_config, to_scheduler_config  # noqa: E402
from pixart_jax.samplers.schedule import DDPMSchedule  # noqa: E402

PHASES = (4, 2, 1)


def pcm(config):
    written = to_scheduler_config(PCM(schedule=DDPMSchedule(dtype="float32")))
    return diffusers.TCDScheduler.from_config(written), from_scheduler_config(written)


def main():
    args = arguments(__doc__)
    rows = time_samplers(args, (
        ("DPM-Solver++ 20 steps, CFG 4.5", 20, 4.5,
         lambda config: (diffusers.DPMSolverMultistepScheduler.from_config(config), from_scheduler_config(config))),
        *((f"PCM {m} step{'s' if m > 1 else ''}, no CFG", m, 0.0, pcm) for m in PHASES)))
    (_, dpm_ours, dpm_ref), *students = rows
    for (name, ours_s, ref_s) in students:
        print(f"{name} vs DPM-Solver 20 + CFG: {dpm_ours / ours_s:.1f}x faster (ours), {dpm_ref / ref_s:.1f}x "
              f"(diffusers)")


if __name__ == "__main__":
    main()
