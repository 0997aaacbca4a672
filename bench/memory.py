"""The 8 GB claim, measured: peak memory of each stage of `PixArtTorchPipeline` with low_memory + int8 at the real
shapes (T5-v1.1-XXL, 24 layers; PixArt-XL/2-1024-MS; the SD VAE; 1024² with guidance), on random weights.

A pipeline directory is written in the real layouts by streaming writers (each tensor drawn, written and dropped,
so the host never holds the float T5): T5-XXL as bfloat16 safetensors, the transformer and VAE as float32 diffusers
folders. The int8 T5 is exported from it once (pixart-jax quantize-t5), then one fresh process generates an image
with int8=True, low_memory=True, memory_report=True and prints each stage's peak: `torch.cuda.max_memory_allocated`
on CUDA, the process's peak RSS on the CPU (VmHWM, reset per stage). Beside a CPU run the table gives the float16
arithmetic: each stage's weights in float16 (int8 codes for T5's linears) plus its measured activations halved.

    python bench/memory.py [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--steps 2] [--size 1024]
                           [--workdir DIR] [--keep] [--t5-layers 24]

Disk: about 18 GB in --workdir (removed afterwards unless --keep). CPU time: several minutes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import print_table  # noqa: E402

T5_XXL = dict(model_type="t5", vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
SD_VAE = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, act_fn="silu", sample_size=512,
              scaling_factor=0.18215)
PROMPTS = ["a small cactus with a happy face in the Sahara desert"]


def write_random(module_shapes, path, dtype, seed):
    """Streams random tensors with the shapes of a reference module's state dict into one safetensors file:
    matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.01), other vectors N(0, 0.01)."""
    from pixart_jax.weights.safetensors_io import write_safetensors

    rng = np.random.default_rng(seed)

    def produce(name):
        shape = module_shapes[name]
        if len(shape) >= 2:
            value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(np.prod(shape[1:])))
        else:
            value = rng.standard_normal(shape, np.float32) * np.float32(0.1)
            value += np.float32("norm" in name and name.endswith("weight"))
        return value.astype(dtype)

    write_safetensors(path, {k: (np.dtype(dtype), s) for k, s in module_shapes.items()}, produce, {"format": "pt"})


def meta_shapes(make):
    """{key: shape} of a torch module's state dict, the module made on the meta device (no memory)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return {k: tuple(v.shape) for k, v in make().state_dict().items()}


def write_pipeline(root, t5_layers):
    """A PixArt-XL-2-1024-MS pipeline folder of random weights (float T5 in bf16) at root/float."""
    import diffusers
    import transformers

    from pixart_jax.models.transformer_config import PRESETS
    from pixart_jax.pipelines.prompts import train_tokenizer
    from pixart_jax.samplers import DPMSolverMultistep, save_scheduler_config

    pipe = os.path.join(root, "float")
    for part in ("text_encoder", "transformer", "vae"):
        os.makedirs(os.path.join(pipe, part), exist_ok=True)
    t5 = dict(T5_XXL, num_layers=t5_layers)
    shapes = meta_shapes(lambda: transformers.T5EncoderModel(transformers.T5Config(**t5)))
    shapes.pop("encoder.embed_tokens.weight")  # tied to shared.weight, as in the hub files
    write_random(shapes, os.path.join(pipe, "text_encoder", "model.safetensors"), ml_dtypes.bfloat16, 0)
    json.dump(t5, open(os.path.join(pipe, "text_encoder", "config.json"), "w"))
    config = PRESETS["PixArt-XL-2-1024-MS"].to_diffusers()
    shapes = meta_shapes(lambda: diffusers.PixArtTransformer2DModel.from_config(config))
    write_random(shapes, os.path.join(pipe, "transformer", "diffusion_pytorch_model.safetensors"), np.float32, 1)
    json.dump(config, open(os.path.join(pipe, "transformer", "config.json"), "w"))
    shapes = meta_shapes(lambda: diffusers.AutoencoderKL.from_config(SD_VAE))
    write_random(shapes, os.path.join(pipe, "vae", "diffusion_pytorch_model.safetensors"), np.float32, 2)
    json.dump(SD_VAE, open(os.path.join(pipe, "vae", "config.json"), "w"))
    train_tokenizer(PROMPTS * 50 + ["a photo of a cat", "an astronaut riding a horse"] * 50,
                    os.path.join(pipe, "tokenizer"), vocab_size=60)
    save_scheduler_config(DPMSolverMultistep(), os.path.join(pipe, "scheduler"))
    json.dump({"_class_name": "PixArtAlphaPipeline"}, open(os.path.join(pipe, "model_index.json"), "w"))
    return pipe


def int8_pipeline(root, float_pipe):
    """root/int8: the float pipeline's parts (linked) with the int8 T5 exported from its text_encoder/."""
    from pixart_jax.weights.t5_int8 import export_int8_t5

    pipe = os.path.join(root, "int8")
    os.makedirs(pipe, exist_ok=True)
    for part in ("transformer", "vae", "tokenizer", "scheduler", "model_index.json"):
        os.symlink(os.path.join(float_pipe, part), os.path.join(pipe, part))
    export_int8_t5(os.path.join(float_pipe, "text_encoder"), os.path.join(pipe, "text_encoder"))
    return pipe


def generate(pipe, device, dtype, size, steps):
    """Runs in a fresh process: RSS after the imports, then the staged int8 generation's memory report."""
    import resource

    from pixart_jax.torch import PixArtTorchPipeline

    with open("/proc/self/status") as f:
        baseline = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    pipeline = PixArtTorchPipeline.from_pretrained(pipe, device=device, dtype=dtype, int8=True, low_memory=True)
    out = pipeline(PROMPTS, num_inference_steps=steps, guidance_scale=4.5, height=size, width=size, seed=0,
                   output_type="np", use_resolution_binning=False, memory_report=True, progress=False)
    print(json.dumps({"baseline": baseline, "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "finite": bool(np.isfinite(out.images).all()),
                      "stages": [dict(stage=s.stage, peak=s.peak_bytes, measure=s.measure, seconds=s.seconds)
                                 for s in out.memory]}))


def weight_bytes(pipe, t5_layers):
    """{stage: (bytes as run in float32/int8, bytes in float16/int8)} of the model each stage loads."""
    from pixart_jax.weights.files import read_weights
    from pixart_jax.weights.safetensors_io import tensor_spec

    def count(folder, name, int8_scales=False):
        tensors = read_weights(os.path.join(pipe, folder), name, lazy=True)
        int8 = fp = 0
        for key in tensors:
            dtype, shape = tensor_spec(tensors, key)
            size = int(np.prod(shape))
            if dtype == np.int8:
                int8 += size
            elif int8_scales and key.endswith("weight_scale"):
                int8 += 4 * size  # scales stay float32
            else:
                fp += size
        return int8 + 4 * fp, int8 + 2 * fp

    return {"encode": count("text_encoder", "model.safetensors", True),
            "denoise": count("transformer", "diffusion_pytorch_model.safetensors"),
            "decode": count("vae", "diffusion_pytorch_model.safetensors")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--t5-layers", type=int, default=24)
    parser.add_argument("--workdir", help="where the random pipeline is written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written pipeline")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: the generating process
    args = parser.parse_args()
    if args.run:
        return generate(args.run, args.device, args.dtype, args.size, args.steps)
    root = args.workdir or tempfile.mkdtemp(prefix="pixart-memory-")
    try:
        float_pipe = os.path.join(root, "float")
        if not os.path.exists(os.path.join(float_pipe, "model_index.json")):
            write_pipeline(root, args.t5_layers)
        pipe = os.path.join(root, "int8")
        if not os.path.exists(os.path.join(pipe, "text_encoder", "config.json")):
            shutil.rmtree(pipe, ignore_errors=True)
            int8_pipeline(root, float_pipe)
        run = subprocess.run([sys.executable, __file__, "--run", pipe, "--device", args.device, "--dtype",
                              args.dtype, "--size", str(args.size), "--steps", str(args.steps)],
                             capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"the generating process failed:\n{run.stderr[-4000:]}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        weights = weight_bytes(pipe, args.t5_layers)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    gib = 2 ** 30
    base = report["baseline"]
    cpu = args.device == "cpu"
    rows = []
    for s in report["stages"]:
        as_run, fp16 = weights[s["stage"]]
        above = s["peak"] - (base if cpu else 0) - as_run  # activations and transients beyond the weights
        row = [s["stage"], f"{as_run / gib:.2f}", f"{s['peak'] / gib:.2f}", f"{above / gib:.2f}", f"{s['seconds']:.0f}"]
        if cpu:
            scale = 0.5 if args.dtype == "float32" else 1.0
            row += [f"{fp16 / gib:.2f}", f"{(fp16 + scale * max(above, 0)) / gib:.2f}"]
        rows.append(row)
    header = ["stage", "weights GiB", f"peak GiB ({s['measure']}, {args.dtype})", "peak - weights" +
              (" - baseline" if cpu else ""), "seconds"]
    if cpu:
        header += ["fp16 weights GiB", "fp16 estimate GiB"]
    print(f"{args.size}x{args.size}, {args.steps} DPM-Solver steps with guidance (batch 2), T5 {args.t5_layers} "
          f"layers int8, low_memory, {args.device} {args.dtype}; process baseline after imports "
          f"{base / gib:.2f} GiB; images finite: {report['finite']}")
    print_table(header, rows)


if __name__ == "__main__":
    main()
