"""PixArt-δ's speed-up: seconds per image of LCM 4 steps (no CFG) vs DPM-Solver 20 steps with CFG 4.5, end to end
(T5, transformer, VAE), for our PixArtPipeline and for diffusers' PixArtAlphaPipeline on the same random weights
in the same process.

  python bench/lcm.py [--size 256] [--layers 2] [--runs 2] [--full]

The default model has the real widths (XL/2: hidden 1152, 16 heads; T5-XXL width 4096; the SD VAE) with few
transformer and T5 layers so that it runs in minutes on a CPU; --full uses all 28 transformer layers. A second
table times each stage alone: tokenize + T5, the denoising loop, VAE decode, resize + transfer to the host.
"""
import argparse
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import print_table, timed_pair  # noqa: E402
from pixart_jax.config import PixArtConfig  # noqa: E402
from pixart_jax.pipeline import PixArtPipeline  # noqa: E402
from pixart_jax.samplers import from_scheduler_config  # noqa: E402
from tests.reference_pipeline import TINY_T5, build_pipeline  # noqa: E402

SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, sample_size=512,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
XXL_T5 = dict(TINY_T5, vocab_size=64, d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128)


def stage_seconds(ours, ref, prompt, latents, kwargs, runs):
    """{stage: (ours s, diffusers s)}: tokenize + T5, the denoising loop, VAE decode, resize + host transfer, each
    timed alone (median of `runs` after a warm-up) on the same inputs as the end-to-end call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pixart_jax.images import resize_and_crop, to_numpy

    guided = kwargs["guidance_scale"] > 1
    loop_kwargs = dict(kwargs, output_type="latent")
    cond, uncond = ours._embeddings(guided, prompt, "", True, "negative_prompt", None, None, None, None)
    embeds = dict(prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask, negative_prompt_embeds=uncond.embeds,
                  negative_prompt_attention_mask=uncond.mask)
    ref_embeds = [torch.from_numpy(np.array(a)) for a in (cond.embeds, cond.mask, uncond.embeds, uncond.mask)]
    z = ours(prompt, latents=latents, progress=False, **loop_kwargs).images
    decode = nnx.jit(lambda vae, z: vae.decode(z / vae.scaling_factor))
    images = decode(ours.vae, z)
    finish = jax.jit(lambda x: resize_and_crop(x, kwargs["height"], kwargs["width"]))
    ref_z = torch.from_numpy(np.asarray(z))
    ref_images = ref.vae.decode(ref_z / ref.vae.config.scaling_factor).sample
    stages = {
        "tokenize + T5": (
            lambda: jnp.asarray(ours._embeddings(guided, prompt, "", True, "negative_prompt", None, None, None,
                                                 None)[0].embeds),
            lambda: ref.encode_prompt(prompt, do_classifier_free_guidance=guided, device="cpu")),
        "denoising loop": (
            lambda: ours(latents=latents, progress=False, **embeds, **loop_kwargs).images,
            lambda: ref(negative_prompt=None, prompt_embeds=ref_embeds[0], prompt_attention_mask=ref_embeds[1],
                        negative_prompt_embeds=ref_embeds[2], negative_prompt_attention_mask=ref_embeds[3],
                        latents=torch.from_numpy(latents), **loop_kwargs).images),
        "VAE decode": (lambda: decode(ours.vae, z),
                       lambda: ref.vae.decode(ref_z / ref.vae.config.scaling_factor).sample),
        "resize + to host": (lambda: to_numpy(finish(images)),
                             lambda: ref.image_processor.postprocess(ref_images, output_type="np")),
    }
    out = {}
    for name, (mine, theirs) in stages.items():
        (_, ours_s), (_, ref_s) = timed_pair(mine, theirs, runs)
        out[name] = (ours_s, ref_s)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (28 = XL/2)")
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="all 28 transformer layers")
    args = parser.parse_args()
    layers = 28 if args.full else args.layers
    transformer = PixArtConfig(depth=layers).to_diffusers()
    transformer.pop("_class_name")
    for key in ("sample_size", "interpolation_scale", "use_additional_conditions"):
        transformer.pop(key)
    prompt = ["a small red circle at the top left of a big blue square"]
    latents = np.random.default_rng(0).standard_normal((1, 4, args.size // 8, args.size // 8)).astype(np.float32)
    rows, stage_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pipe"
        ref = build_pipeline(path, micro=True, scheduler=diffusers.DPMSolverMultistepScheduler(),
                             transformer=transformer, t5=dict(XXL_T5, num_layers=args.t5_layers), vae=SD_VAE)
        ours = PixArtPipeline.from_pretrained(str(path))
        lcm = diffusers.LCMScheduler.from_config(ref.scheduler.config)
        for name, steps, guidance, ref_scheduler, ours_sampler in (
                ("DPM-Solver++ 20 steps, CFG 4.5", 20, 4.5, ref.scheduler, ours.sampler),
                ("LCM 4 steps, no CFG", 4, 0.0, lcm, from_scheduler_config(dict(lcm.config)))):
            ref.scheduler, ours.sampler = ref_scheduler, ours_sampler
            kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=args.size, width=args.size,
                          output_type="np", use_resolution_binning=False)
            with torch.no_grad():
                (_, ours_s), (_, ref_s) = timed_pair(
                    lambda: ours(prompt, latents=latents, progress=False, **kwargs).images,
                    lambda: ref(prompt, latents=torch.from_numpy(latents), **kwargs).images, args.runs)
                print(f"{name}: ours {ours_s:.2f} s, diffusers {ref_s:.2f} s per image end to end", flush=True)
                stages = stage_seconds(ours, ref, prompt, latents, kwargs, args.runs)
            rows.append([name, ours_s, ref_s])
            stage_rows += [[name if i == 0 else "", stage, f"{o:.2f}", f"{r:.2f}", f"{r / o:.2f}x"]
                           for i, (stage, (o, r)) in enumerate(stages.items())]
    print(f"{args.size}x{args.size}, transformer {layers} layers at XL/2 width, T5 {args.t5_layers} layers at XXL "
          f"width, SD VAE, fp32, batch 1, median of {args.runs} (compilation excluded)")
    print_table(["sampler", "ours s/image", "diffusers s/image", "diffusers / ours"],
                [[name, f"{o:.2f}", f"{r:.2f}", f"{r / o:.2f}x"] for name, o, r in rows])
    (_, dpm_ours, dpm_ref), (_, lcm_ours, lcm_ref) = rows
    print(f"LCM 4 vs DPM-Solver 20 + CFG: {dpm_ours / lcm_ours:.1f}x faster (ours), {dpm_ref / lcm_ref:.1f}x faster "
          f"(diffusers); ours LCM 4 vs diffusers DPM 20 + CFG: {dpm_ref / lcm_ours:.1f}x")
    print("\nstage by stage (each timed alone, same inputs):")
    print_table(["sampler", "stage", "ours s", "diffusers s", "diffusers / ours"], stage_rows)


if __name__ == "__main__":
    main()
