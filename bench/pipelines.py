"""What the end-to-end pipeline benchmarks share (bench/lcm.py, bench/pcm.py): a PixArt pipeline with XL/2 widths
and random weights, built in diffusers and loaded by ours, and the seconds per image of several samplers on both,
in the same process (T5, transformer, VAE; compilation excluded).

The default model has the real widths (XL/2: hidden 1152, 16 heads; T5-XXL width 4096; the SD VAE) with few
transformer and T5 layers so that it runs in minutes on a CPU; --full uses all 28 transformer layers. With
stages, a second table times each stage alone: tokenize + T5, the denoising loop, VAE decode, resize + transfer to
the host.
"""
import argparse
import os
import pathlib
import tempfile

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from bench.common import cpu_description, print_table, timed_pair
from pixart_jax.images import resize_and_crop, to_numpy
from pixart_jax.models.transformer_config import MAX_TOKENS_KEY, PixArtConfig
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.testing.reference_pipeline import TINY_T5, build_pipeline, build_sigma_pipeline

SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, sample_size=512,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
NARROW_VAE = dict(SD_VAE, block_out_channels=[32] * 4, layers_per_block=1)  # SD_VAE's 8x downsampling, small
XXL_T5 = dict(TINY_T5, vocab_size=64, d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128)
PROMPT = ["a small red circle at the top left of a big blue square"]


def arguments(description, size=256, t5_layers=2):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (28 = XL/2)")
    parser.add_argument("--t5-layers", type=int, default=t5_layers)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="all 28 transformer layers")
    return parser.parse_args()


def time_samplers(args, samplers, stages=False, sigma=False):
    """[[name, ours s/image, diffusers s/image]] for `samplers`: (name, steps, guidance, a function of the
    reference's DPMSolverMultistepScheduler config -> (diffusers scheduler, our sampler)), one pipeline each side;
    with `stages`, each stage timed alone too (a second table). `sigma`: diffusers' PixArtSigmaPipeline of the
    Σ 1024-MS transformer (300 tokens, pe interpolation 2, no micro-conditions) and the SDXL VAE's scale, timed
    to the latents (T5 and the loop) with a narrow 4-level VAE (SD_VAE's shape at 32 channels, decode not timed):
    the SD VAE and its decode on both sides would not fit beside the rest at Σ's sizes."""
    layers = 28 if args.full else args.layers
    transformer = PixArtConfig(depth=layers).to_diffusers()
    for key in ("_class_name", "sample_size", "interpolation_scale", "use_additional_conditions", MAX_TOKENS_KEY):
        transformer.pop(key)
    latents = np.random.default_rng(0).standard_normal((1, 4, args.size // 8, args.size // 8)).astype(np.float32)
    rows, stage_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pipe"
        parts = dict(scheduler=diffusers.DPMSolverMultistepScheduler(), transformer=transformer,
                     t5=dict(XXL_T5, num_layers=args.t5_layers), vae=NARROW_VAE if sigma else SD_VAE)
        ref = build_sigma_pipeline(path, sample_size=128, **parts) if sigma else build_pipeline(path, micro=True,
                                                                                                **parts)
        ours = PixArtPipeline.from_pretrained(str(path))
        config = dict(ref.scheduler.config)
        for name, steps, guidance, make in samplers:
            ref.scheduler, ours.sampler = make(config)
            kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=args.size, width=args.size,
                          output_type="latent" if sigma else "np", use_resolution_binning=False)
            with torch.no_grad():
                (_, ours_s), (_, ref_s) = timed_pair(
                    lambda: ours(PROMPT, latents=latents, progress=False, **kwargs).images,
                    lambda: ref(PROMPT, latents=torch.from_numpy(latents), **kwargs).images, args.runs)
                print(f"{name}: ours {ours_s:.2f} s, diffusers {ref_s:.2f} s per image end to end", flush=True)
                timings = stage_seconds(ours, ref, PROMPT, latents, kwargs, args.runs) if stages else {}
            stage_rows += [[name if i == 0 else "", stage, f"{o:.2f}", f"{r:.2f}", f"{r / o:.2f}x"]
                           for i, (stage, (o, r)) in enumerate(timings.items())]
            rows.append([name, ours_s, ref_s])
    what = "PixArt-Σ 1024-MS settings, to the latents" if sigma else "SD VAE"
    print(f"{args.size}x{args.size}, transformer {layers} layers at XL/2 width, T5 {args.t5_layers} layers at XXL "
          f"width, {what}, fp32, batch 1, median of {args.runs} (compilation excluded); {cpu_description()}, load "
          f"average {os.getloadavg()[0]:.1f}")
    print_table(["sampler", "ours s/image", "diffusers s/image", "diffusers / ours"],
                [[name, f"{o:.2f}", f"{r:.2f}", f"{r / o:.2f}x"] for name, o, r in rows])
    if stages:
        print("\nstage by stage (each timed alone, same inputs):")
        print_table(["sampler", "stage", "ours s", "diffusers s", "diffusers / ours"], stage_rows)
    return rows


def stage_seconds(ours, ref, prompt, latents, kwargs, runs):
    """{stage: (ours s, diffusers s)}: tokenize + T5, the denoising loop, VAE decode, resize + host transfer, each
    timed alone (median of `runs` after a warm-up) on the same inputs as the end-to-end call."""
    guided = kwargs["guidance_scale"] > 1
    loop_kwargs = dict(kwargs, output_type="latent")
    request = GenerationRequest(prompt=tuple(prompt), guidance_scale=kwargs["guidance_scale"])
    cond, uncond = ours._embeddings(request)
    embeds = dict(prompt_embeds=cond.embeds, prompt_attention_mask=cond.mask, negative_prompt_embeds=uncond.embeds,
                  negative_prompt_attention_mask=uncond.mask)
    ref_embeds = [torch.from_numpy(np.array(a)) for a in (cond.embeds, cond.mask, uncond.embeds, uncond.mask)]
    z = ours(prompt, latents=latents, progress=False, **loop_kwargs).images
    decode = nnx.jit(lambda vae, z: vae.decode(z / vae.scaling_factor))
    images = decode(ours.vae, z)
    finish = jax.jit(lambda x: resize_and_crop(x, kwargs["height"], kwargs["width"]))
    ref_z = torch.from_numpy(np.array(z))  # a writable copy for torch
    ref_images = ref.vae.decode(ref_z / ref.vae.config.scaling_factor).sample
    stages = {
        "tokenize + T5": (
            lambda: jnp.asarray(ours._embeddings(request)[0].embeds),
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

