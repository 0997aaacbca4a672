"""The prompt stage (caption cleaning, tokenisation, T5) of our PixArtPipeline against diffusers' encode_prompt, on
the same random T5 at XXL widths, per prompt length: ours as the pipeline runs it (T5 trimmed to the prompts'
tokens), ours on all 120 positions (encode_prompt's trim=False: what diffusers computes), diffusers, and a prompt
cache hit. Without guidance (LCM) and with it (the empty negative prompt encoded too).

  python bench/t5_stage.py [--t5-layers 1] [--runs 3]
"""
import argparse
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402
import jax  # noqa: E402
import torch  # noqa: E402

from bench.common import cpu_description, median_seconds, print_table, timed_pair  # noqa: E402
from bench.pipelines import XXL_T5  # noqa: E402
from pixart_jax.pipelines.prompt_cache import PromptCache  # noqa: E402
from pixart_jax.pipelines.prompts import encode_prompt, preprocess, tokenize, trimmed_length  # noqa: E402
from pixart_jax.pipelines.request import GenerationRequest  # noqa: E402
from pixart_jax.pipelines.text_to_image import PixArtPipeline  # noqa: E402
from pixart_jax.testing.reference_pipeline import build_pipeline  # noqa: E402

PROMPTS = ["a red fox", "a small red circle at the top left of a big blue square",
           "an astronaut riding a horse on the moon, highly detailed, dramatic light, a nebula behind him, "
           "4k photograph, the earth rising over the horizon"]


def stage_rows(ours, ref, prompt, guidance, runs):
    """[prompt tokens, T5 run length, guided, ours trimmed s, ours 120 s, diffusers s, cache hit s]."""
    guided = guidance > 1
    request = GenerationRequest(prompt=prompt, guidance_scale=guidance)
    untrimmed = dict(tokenizer=ours.tokenizer, text_encoder=ours.text_encoder, do_classifier_free_guidance=guided)
    mask = tokenize(ours.tokenizer, preprocess([prompt, ""] if guided else [prompt]))[1]
    with torch.inference_mode():
        (_, trimmed), (_, theirs) = timed_pair(
            lambda: ours._embeddings(request)[0].embeds,
            lambda: ref.encode_prompt(prompt, do_classifier_free_guidance=guided, device="cpu"), runs)
        full = median_seconds(lambda: encode_prompt(prompt, **untrimmed).embeds, runs)
    ours.prompt_cache = PromptCache(1)
    hit = median_seconds(lambda: ours._embeddings(request)[0].embeds, runs)
    ours.prompt_cache = PromptCache()
    return [int(mask[0].sum()), trimmed_length(mask, 120), "yes" if guided else "no", f"{trimmed:.3f}",
            f"{full:.3f}", f"{theirs:.3f}", f"{theirs / trimmed:.2f}x", f"{hit * 1e3:.2f} ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t5-layers", type=int, default=1, help="T5 blocks at XXL widths (the real XXL has 24)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pipe"
        ref = build_pipeline(path, micro=False, scheduler=diffusers.DPMSolverMultistepScheduler(),
                             t5=dict(XXL_T5, num_layers=args.t5_layers))
        ours = PixArtPipeline.from_pretrained(str(path))
        rows = [stage_rows(ours, ref, prompt, guidance, args.runs) for guidance in (0.0, 4.5) for prompt in PROMPTS]
    print(f"prompt stage, T5 {args.t5_layers} layer(s) at XXL widths, fp32, batch 1, median of {args.runs} "
          f"interleaved runs after a warm-up; {jax.devices()[0].platform}, {cpu_description()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print_table(["tokens", "T5 runs on", "CFG", "ours s", "ours, all 120 s", "diffusers s", "diffusers / ours",
                 "ours, cached"], rows)


if __name__ == "__main__":
    main()
