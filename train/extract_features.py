"""Feature extraction: images + captions -> T5 and VAE features in ArrayRecord shards (see
pixart_jax/training/features.py for what is computed and stored).

    python -m train.extract_features --images DIR_OR_INDEX --text-encoder DIR --tokenizer DIR --vae DIR \\
        --out DIR --resolution 256|512|1024|2048 [--max-length 120|300] [--batch-size 32] [--shard-size 512]
        [--t5-dtype bfloat16]
        [--control canny|hed [--hed ControlNetHED.pth]]
"""
import argparse

from pixart_jax.choices import DType
from pixart_jax.pipelines.aspect_ratios import TRAIN_TABLES
from pixart_jax.pipelines.control import ControlKind
from pixart_jax.pipelines.prompts import MAX_LENGTH
from pixart_jax.training.features import ExtractionSettings, extract


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m train.extract_features", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="image folder with .txt captions, or a .json/.jsonl index")
    parser.add_argument("--image-root", help="folder the index's paths are relative to (default: the index's)")
    parser.add_argument("--text-encoder", required=True, help="Hugging Face T5 folder (config.json + weights)")
    parser.add_argument("--tokenizer", required=True, help="T5 tokenizer folder (spiece.model)")
    parser.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder")
    parser.add_argument("--out", required=True, help="output folder (re-running resumes)")
    parser.add_argument("--resolution", type=int, required=True, choices=sorted(TRAIN_TABLES))
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH,
                        help="caption tokens: 120 for PixArt-α (default), 300 for PixArt-Σ")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder call, all devices")
    parser.add_argument("--shard-size", type=int, default=512, help="records per ArrayRecord file")
    parser.add_argument("--t5-dtype", choices=list(DType), type=DType, default=DType.bfloat16,
                        help="T5 compute dtype (the reference extracts in bfloat16)")
    parser.add_argument("--vae-dtype", choices=list(DType), type=DType, default=DType.float32,
                        help="VAE compute dtype")
    parser.add_argument("--no-clean-caption", dest="clean_caption", action="store_false",
                        help="only lower-case and strip captions")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding and resizing images")
    parser.add_argument("--control", choices=[ControlKind.canny, ControlKind.hed], type=ControlKind,
                        help="also store ControlNet control latents of each image's edge map")
    parser.add_argument("--hed", help="ControlNetHED.pth, the HED network's weights (for --control hed)")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.shard_size, args.workers, args.max_length) < 1:
        parser.error("--batch-size, --shard-size, --workers and --max-length must be positive")
    return ExtractionSettings(**vars(args))


def main(argv=None):
    manifest = extract(parse_args(argv))
    print(f"{manifest['examples']} examples in {manifest['shards']} shards; "
          f"{manifest['skipped_done']} already done before this run; {len(manifest['failed'])} failed")
    for failure in manifest["failed"]:
        print(f"  failed {failure['path']}: {failure['error']}")
    return manifest


if __name__ == "__main__":
    main()
