"""The `pixart-jax` command line: `demo` (train, distil and score a small PixArt offline), `generate` from a PixArt
pipeline directory (JAX, or `--backend torch`), `serve` one over HTTP, `convert` / `inspect` checkpoints,
`quantize-t5` (the int8 T5 folder), `plan` a training config on a TPU slice, `sample-random` as an install check."""
import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.choices import DType, Int8Backend, NoiseSource, TorchDType, choose
from pixart_jax.files import check_writable
from pixart_jax.images import grid, write_png
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import AutoencoderKL, VAEConfig
from pixart_jax.pipelines.control import ControlKind, control_request
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
from pixart_jax.pipelines.request import GenerationRequest
from pixart_jax.pipelines.text_to_image import PixArtPipeline, check_pipeline_directory
from pixart_jax.samplers import DDIM, SamplerName
from pixart_jax.seeds import check_seed
from pixart_jax.serving.command import add_parser as add_serve_parser
from pixart_jax.serving.command import serve as run_server
from pixart_jax.serving.command import settings_of
from pixart_jax.training.errors import RunError
from pixart_jax.weights.controlnet import base_config
from pixart_jax.weights.controlnet import detect_format as controlnet_format
from pixart_jax.weights.conversion import LAYOUTS, describe
from pixart_jax.weights.conversion import convert as convert_checkpoint
from pixart_jax.weights.t5_int8 import export_int8_t5
from pixart_jax.weights.transformer import transformer_config
from pixart_jax.weights.vae import read_vae_config

TINY_VAE = VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)


class UsageError(ValueError):
    """A command-line value out of range or unusable on this machine, found before any work: exit code 2, as
    argparse's own errors."""


class CompileClock:
    """Seconds JAX spent tracing and compiling since the last reset (from jax.monitoring events)."""

    seconds = 0.0

    @classmethod
    def listen(cls, event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            cls.seconds += duration


jax.monitoring.register_event_duration_secs_listener(CompileClock.listen)


def timed_call(run):
    """(images, compile seconds, run seconds, output) of one pipeline call, `run()`."""
    CompileClock.seconds = 0.0
    start = time.perf_counter()
    output = run()
    total = time.perf_counter() - start
    return output.images, CompileClock.seconds, total - CompileClock.seconds, output


def output_paths(out, count):
    """Where `count` images go: `out` alone, or `stem-0.png`, `stem-1.png`, ... and their grid as `out`."""
    stem = os.path.splitext(out)[0]
    return [out] if count == 1 else [f"{stem}-{i}.png" for i in range(count)] + [out]


def check_output(out, count, overwrite=False):
    """Refuses, before any work, an --out that is not a .png name, cannot be written, or would replace an existing
    file without `overwrite` (--overwrite): no image is lost, neither the new ones nor the user's."""
    if not out.lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file, got {out!r}")
    check_writable(out)
    for path in output_paths(out, count):
        if os.path.isdir(path):
            raise ValueError(f"--out {out!r}: {path} is a folder; name a .png file")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise ValueError(f"--out {out!r}: {path} exists and is not writable")
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"--out {out!r}: {path} exists (pass --overwrite to replace it)")


def save_images(images, out):
    """One image: `out`. Several: `stem-0.png`, `stem-1.png`, ... and their grid as `out`. Each file is complete
    or absent."""
    paths = output_paths(out, len(images))
    for image, path in zip(images if len(images) == 1 else [*images, grid(images)], paths):
        write_png(image, path)
    return paths


def _control(args):
    """The ControlRequest of a --controlnet call (None without one), checked before anything loads."""
    if args.controlnet is None:
        if args.control_image is not None:
            raise UsageError("--control-image needs --controlnet (a PixArt ControlNet checkpoint)")
        return None
    if args.control_image is None:
        raise UsageError("--controlnet needs --control-image (the image whose edges the output follows)")
    if args.backend == "torch" and (args.control == ControlKind.hed or args.hed is not None):
        raise UsageError("--control hed and --hed are for the JAX backend (the PyTorch path has no HED network)")
    if args.control == ControlKind.hed and args.hed is None:
        raise UsageError("--control hed needs --hed (the HED network's ControlNetHED.pth)")
    control = control_request(args.control_image, args.control)  # a missing or unreadable image fails here
    controlnet_format(args.controlnet)  # a path that is no ControlNet directory fails here
    return control


def _loras(args):
    """[(path, scale)] of the --lora values PATH[:SCALE] (scale 1 by default), checked before anything loads: a
    UsageError for a path that does not exist, a scale that is not a finite number, or --low-memory (which loads a
    fresh transformer for every call)."""
    adapters = []
    for value in args.lora or ():
        path, scale = value, "1"
        if not os.path.exists(value) and ":" in value:  # an existing path may itself hold ":"
            path, _, scale = value.rpartition(":")
        try:
            number = float(scale)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UsageError(f"--lora {value}: the scale after ':' must be a finite number, got {scale!r}")
        if not os.path.exists(path):
            raise UsageError(f"--lora {value}: {path} does not exist")
        adapters.append((path, number))
    if adapters and args.low_memory:
        raise UsageError("--lora needs the transformer resident: it cannot be combined with --low-memory")
    return adapters


def _check_seed(seed):
    """A UsageError for a --seed out of [0, 2**32 - 1], before anything is built."""
    try:
        check_seed(seed, "--seed")
    except ValueError as e:
        raise UsageError(str(e)) from None


def _request(args, control):
    """The GenerationRequest of the command's values, checked against the model's config files alone (nothing is
    loaded): a UsageError for a value out of range."""
    try:
        request = GenerationRequest(
            prompt=tuple(args.prompt), negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
            guidance_scale=args.guidance, height=args.height, width=args.width, num_images_per_prompt=args.num_images,
            seed=args.seed, eta=args.eta, control=control)
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_pipeline_directory(args.model)
    cfg = (base_config(args.controlnet) if args.controlnet
           else transformer_config(os.path.join(args.model, "transformer")))
    vae_scale = read_vae_config(os.path.join(args.model, "vae")).spatial_factor
    try:
        request.sizes(cfg, vae_scale)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return request


def _torch_device(args):
    """The torch device of --device (default cpu): a UsageError for one this torch or machine lacks."""
    try:
        from pixart_jax.torch.devices import check_device  # imported on use: only this backend needs torch
    except ImportError as e:
        raise UsageError(f"--backend torch needs PyTorch ({e}): pip install 'pixart-jax[torch]'") from None

    device = args.device or "cpu"
    try:
        return check_device(device)
    except ValueError as e:
        raise UsageError(f"--device {device}: {e}") from None


def _torch_pipeline(args, device):
    from pixart_jax.torch import PixArtTorchPipeline

    pipe = PixArtTorchPipeline.from_pretrained(args.model, device=device, dtype=args.dtype, int8=args.int8,
                                               low_memory=args.low_memory, sampler=args.scheduler,
                                               int8_backend=args.int8_backend, controlnet=args.controlnet)
    return pipe, type(pipe.scheduler).__name__, str(device)


def _check_jax_options(args):
    """The JAX backend's compute DType; a UsageError for a torch-only option."""
    for flag, value in (("--device", args.device), ("--low-memory", args.low_memory),
                        ("--memory-report", args.memory_report), ("--noise torch", args.noise == NoiseSource.torch)):
        if value:
            raise UsageError(f"{flag} is for --backend torch")
    try:
        return choose(DType, str(args.dtype), "--dtype of the JAX backend")
    except ValueError as e:
        raise UsageError(str(e)) from None


def _jax_pipeline(args, dtype):
    if args.controlnet:
        pipe = PixArtControlNetPipeline.from_pretrained(args.model, args.controlnet, hed=args.hed, dtype=dtype.jax,
                                                        sampler=args.scheduler, int8=args.int8)
    else:
        pipe = PixArtPipeline.from_pretrained(args.model, dtype=dtype.jax, sampler=args.scheduler, int8=args.int8)
    return pipe, type(pipe.sampler).__name__, jax.devices()[0].platform


def generate(args):
    """Text-to-image with a PixArt pipeline directory in the diffusers layout (with --controlnet: guided by the
    edges of a control image)."""
    _check_seed(args.seed)
    check_output(args.out, len(args.prompt) * args.num_images, args.overwrite)
    torch_backend = args.backend == "torch"
    request = _request(args, _control(args))
    loras = _loras(args)
    option = _torch_device(args) if torch_backend else _check_jax_options(args)
    start = time.perf_counter()
    pipe, sampler, device = (_torch_pipeline if torch_backend else _jax_pipeline)(args, option)
    for path, scale in loras:  # each its own adapter (default_0, default_1, ...), all active together
        pipe.load_lora_weights(path, scale=scale)
    print(f"loaded {args.model}{''.join(f' + LoRA {p} ({s:g})' for p, s in loras)} in "
          f"{time.perf_counter() - start:.1f} s ({sampler})")
    extra = {"memory_report": args.memory_report, "noise": args.noise} if torch_backend else {}
    images, compile_s, run_s, output = timed_call(lambda: pipe.generate(request, **extra))
    for path in save_images(images, args.out):
        print(f"wrote {path}")
    print(f"{len(images)} image(s) {images[0].size[0]}x{images[0].size[1]}, {args.steps} steps: compile "
          f"{compile_s:.1f} s, run {run_s:.1f} s on {device} ({args.backend})")
    if args.memory_report:
        from pixart_jax.torch import format_report

        print(format_report(output.memory))


def quantize_t5(args):
    """Writes the int8 T5 (every linear as int8 codes + scales) of a Hugging Face T5 folder, once."""
    print(f"wrote {export_int8_t5(args.src, args.dst, args.dtype)}")


def sample_random(args):
    """DDIM with a tiny randomly initialised PixArt and VAE: checks the install end to end in seconds."""
    _check_seed(args.seed)
    if args.size < 16 or args.size % 16:
        raise UsageError(f"--size must be a positive multiple of 16, got {args.size}")
    check_output(args.out, 1, args.overwrite)
    key_model, key_vae, key_text = jax.random.split(jax.random.key(args.seed), 3)
    cfg = PRESETS["tiny"]
    model = PixArtTransformer(cfg, rngs=nnx.Rngs(key_model))
    # The reference init zeroes the final layer (the output would be flat): re-draw it so the sample shows something.
    model.final_layer.linear.kernel[...] = 0.02 * jax.random.normal(key_model, model.final_layer.linear.kernel.shape)
    pipe = PixArtPipeline(transformer=model, text_encoder=None, tokenizer=None,
                          vae=AutoencoderKL(TINY_VAE, rngs=nnx.Rngs(key_vae)), sampler=DDIM())
    caption = jax.random.normal(key_text, (1, cfg.max_tokens, cfg.caption_channels))
    request = GenerationRequest(prompt_embeds=caption, prompt_attention_mask=jnp.ones(caption.shape[:2]),
                                num_inference_steps=args.steps, guidance_scale=1.0, height=args.size, width=args.size,
                                seed=args.seed, use_resolution_binning=False)
    images, compile_s, run_s, _ = timed_call(lambda: pipe.generate(request))
    save_images(images, args.out)
    print(f"wrote {args.out} ({args.size}x{args.size}, {args.steps} DDIM steps): compile {compile_s:.1f} s, "
          f"run {run_s:.2f} s on {jax.devices()[0].platform}")


def demo(args):
    """Trains a small PixArt from scratch on procedural shapes, distils it with LCD and PCM and scores them (offline,
    CPU)."""
    from pixart_jax.demo.run import METHODS, run

    report = run(args.out, quick=args.quick)
    print(f"\n{'method':<20} {'aligned %':>9} {'fidelity %':>10}  kind / colour / size / position %")
    for name, *_ in METHODS:
        d = report["attributes"][name]
        print(f"{name:<20} {d['aligned']:9.1f} {report['fidelity'][name]:10.1f}  {d['kind']:.0f} / "
              f"{d['colour']:.0f} / {d['size']:.0f} / {d['position']:.0f}")
    print(f"fidelity of the captions' renderings through the autoencoder: {report['fidelity_autoencoder']:.1f} %")
    print("step change (mean |Δ| between the 1/2/4/8-step images of one noise): "
          + ", ".join(f"{family} {value:.4f}" for family, value in report["step_change"].items()))
    follow = report["control_follow"]
    print(f"control followed (IoU >= {follow['iou_threshold']}): ControlNet {follow['controlnet']:.1f} %, "
          f"without control {follow['no_control']:.1f} %")
    concept = report["lora_concept"]
    print(f"new concept {concept['token']!r} by DreamBooth-LoRA: aligned {concept['before']:.1f} % -> "
          f"{concept['after']:.1f} %; the usual prompts {concept['others_before']:.1f} % -> "
          f"{concept['others_after']:.1f} %")
    print(f"wrote {os.path.join(args.out, 'grid.png')} and {os.path.join(args.out, 'scores.json')} "
          f"({sum(report['seconds'].values()):.0f} s)")


def plan(args):
    """Compiles a training config's step ahead of time for a TPU slice and prints per-chip HBM (needs libtpu)."""
    from pixart_jax.planning.command import main as plan_main

    return plan_main(args.extra + args.args)


def convert(args):
    """Converts a PixArt transformer checkpoint between the diffusers, original (.pth) and pixart-jax layouts (a
    ControlNet-Transformer between the original .pth / official folder and pixart-jax layouts)."""
    print(f"wrote {convert_checkpoint(args.src, args.dst, args.to, args.config, args.overwrite)}")


def inspect(args):
    """Lists the tensors of a checkpoint (any supported layout) with their shapes and dtypes."""
    print("\n".join(describe(args.path)))


def serve(args):
    """An HTTP server for a pipeline directory: the OpenAI images API with progress events, dynamic batching, a page."""
    try:
        settings = settings_of(args, _loras(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return run_server(settings, args.host, args.port)


def _add_generate(commands):
    """The parser of `generate`."""
    p = commands.add_parser("generate", help=generate.__doc__)
    p.add_argument("--model", required=True, help="pipeline directory (model_index.json, transformer/, ...)")
    p.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance; <= 1 disables it")
    p.add_argument("--scheduler", choices=list(SamplerName), type=SamplerName,
                   help="default: the directory's scheduler")
    p.add_argument("--eta", type=float, default=0.0, help="stochasticity: DDIM's η, TCD's and PCM's γ (0 to 1)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--dtype", choices=list(TorchDType), type=TorchDType, default=TorchDType.float32,
                   help="compute dtype (float16: --backend torch only)")
    p.add_argument("--backend", choices=("jax", "torch"), default="jax",
                   help="torch: the PyTorch path (pip install pixart-jax[torch])")
    p.add_argument("--device", help="torch device, e.g. cuda or cpu (--backend torch; default cpu)")
    p.add_argument("--int8", action="store_true", help="T5 with int8 weights (every linear)")
    p.add_argument("--int8-backend", choices=list(Int8Backend), type=Int8Backend, default=Int8Backend.weight_only,
                   help="--backend torch: bitsandbytes is transformers' LLM.int8 (experimental below compute "
                        "capability 7.5)")
    p.add_argument("--low-memory", action="store_true",
                   help="--backend torch: load T5, the transformer and the VAE one at a time, freeing each")
    p.add_argument("--memory-report", action="store_true", help="--backend torch: print each stage's peak memory")
    p.add_argument("--noise", choices=list(NoiseSource), type=NoiseSource, default=NoiseSource.jax,
                   help="--backend torch: jax draws the JAX backend's noise for --seed (the same image), torch a "
                        "torch.Generator's (diffusers' image)")
    p.add_argument("--out", default="out/image.png")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--controlnet", help="a PixArt ControlNet checkpoint (original .pth, official or pixart-jax "
                                        "folder): replaces the pipeline's transformer")
    p.add_argument("--control-image", help="with --controlnet: the image whose edges the output follows (and whose "
                                           "size it has unless --height/--width are given)")
    p.add_argument("--control", choices=list(ControlKind), type=ControlKind, default=ControlKind.canny,
                   help="edge map of the control image: canny, hed (needs --hed), none (it already is one)")
    p.add_argument("--hed", help="ControlNetHED.pth, the HED network's weights (for --control hed; JAX backend)")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA adapter (PEFT folder, pytorch_lora_weights.safetensors, kohya file) at weight SCALE "
                        "(default 1); repeat to combine several")
    p.set_defaults(run=generate)


def _add_commands(commands):
    """Every command's parser, in the order `pixart-jax --help` lists them."""
    p = commands.add_parser("demo", help=demo.__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a short run (about 1 minute) that checks the whole path; its scores mean nothing")
    p.add_argument("--out", default="out/demo", help="output directory (grid.png, scores.json, models)")
    p.set_defaults(run=demo)
    _add_generate(commands)
    add_serve_parser(commands, serve)
    p = commands.add_parser("quantize-t5", help=quantize_t5.__doc__)
    p.add_argument("--src", required=True, help="a Hugging Face T5 folder (a pipeline's text_encoder/)")
    p.add_argument("--dst", required=True, help="output folder: use it as a pipeline's text_encoder/ with --int8")
    p.add_argument("--dtype", choices=list(TorchDType), type=TorchDType,
                   help="dtype of the tensors that stay float (embedding, norms); default: the source's")
    p.set_defaults(run=quantize_t5)
    p = commands.add_parser("convert", help=convert.__doc__)
    p.add_argument("--src", required=True, help="a diffusers transformer/ or pipeline folder, an original .pth / "
                                                 ".safetensors, or a pixart-jax folder")
    p.add_argument("--dst", required=True, help="output folder (or .pth/.safetensors file with --to original)")
    p.add_argument("--to", choices=LAYOUTS, default="jax")
    p.add_argument("--config", help=f"variant of an original .pth whose file name does not say it, one of "
                                    f"{sorted(PRESETS)}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing destination that pixart-jax did not write (never the source)")
    p.set_defaults(run=convert)
    p = commands.add_parser("inspect", help=inspect.__doc__)
    p.add_argument("path")
    p.set_defaults(run=inspect)
    p = commands.add_parser("plan", help=plan.__doc__, add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="CONFIG topology=v5e:2x4 [program=pretrain|lcm] [key=value ...]")
    p.set_defaults(run=plan)
    p = commands.add_parser("sample-random", help=sample_random.__doc__)
    p.add_argument("--size", type=int, default=256, help="image side in pixels, a multiple of 16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/random.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=sample_random)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pixart-jax", description="PixArt-α / PixArt-δ in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_commands(commands)
    args, args.extra = parser.parse_known_args(argv)
    if args.extra and args.command != "plan":  # only plan passes options through (to the training config)
        parser.error(f"unrecognized arguments: {' '.join(args.extra)}")
    try:
        return args.run(args) or 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # bad input (WeightsError included), unwritable paths, a demo run that cannot resume: one clear line
    except (ValueError, OSError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
