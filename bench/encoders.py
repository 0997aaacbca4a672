"""Speed of our T5 encoder and VAE decoder against the PyTorch references (transformers / diffusers), same process.

Both sides run the same random weights in fp32: the reference models are built, saved in their real layouts and
loaded through our loaders. Ours is jitted; each row is the median of `--runs` timed calls after one warm-up
call (whose time, compilation included, is shown apart), ours and the reference's calls interleaved. Needs torch,
transformers and diffusers.

    python bench/encoders.py [--runs 5] [--t5-layers 2]
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import timed_pair  # noqa: E402
from pixart_jax.models.vae import SD_VAE  # noqa: E402
from pixart_jax.weights.t5 import load_text_encoder  # noqa: E402
from pixart_jax.weights.vae import load_vae

# T5-v1.1-XXL widths (PixArt's text encoder) with a small vocabulary: only the embedding table is smaller.
T5_XXL = dict(vocab_size=1024, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, relative_attention_max_distance=128)


def bench_t5(directory, layers, runs, batch=2, length=120):
    import transformers

    config = transformers.T5Config(num_layers=layers, **T5_XXL)
    reference = transformers.T5EncoderModel(config).eval()
    reference.save_pretrained(directory)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, config.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 40:] = 0
    ours = load_text_encoder(directory)
    encode = nnx.jit(lambda model, i, m: model(i, m))
    tids, tmask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    with torch.inference_mode():
        times = timed_pair(lambda: jax.block_until_ready(encode(ours, ids, mask)),
                           lambda: reference(input_ids=tids, attention_mask=tmask), runs)
    return (f"T5 XXL widths, {layers} layers, {batch}x{length} tokens", *times)


def bench_vae_decode(directory, sizes, runs):
    import diffusers

    levels = len(SD_VAE.block_out_channels)
    reference = diffusers.AutoencoderKL(block_out_channels=SD_VAE.block_out_channels, layers_per_block=2,
                                        down_block_types=("DownEncoderBlock2D",) * levels,
                                        up_block_types=("UpDecoderBlock2D",) * levels, sample_size=512).eval()
    reference.save_pretrained(directory)
    ours = load_vae(directory)
    decode = nnx.jit(lambda vae, z: vae.decode(z))
    rows = []
    for size in sizes:
        z = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
        with torch.inference_mode():
            times = timed_pair(lambda z=z: jax.block_until_ready(decode(ours, z)),
                               lambda z=z: reference.decode(torch.from_numpy(z)), runs)
        rows.append((f"VAE decode {size}x{size} (latent {size // 8}x{size // 8}), batch 1", *times))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--t5-layers", type=int, default=2, help="T5 blocks (the real XXL has 24)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as t5_dir, tempfile.TemporaryDirectory() as vae_dir:
        rows = [bench_t5(t5_dir, args.t5_layers, args.runs)] + bench_vae_decode(vae_dir, (256, 512), args.runs)
    print(f"\n{jax.devices()[0].platform} / torch {torch.__version__} ({torch.get_num_threads()} threads), fp32, "
          f"median of {args.runs} interleaved runs after a warm-up call\n")
    print(f"| {'model':<46} | ours (s) | PyTorch (s) | PyTorch / ours | ours 1st call (s) |")
    print(f"|{'-' * 48}|---------:|------------:|---------------:|------------------:|")
    for name, (ours_first, ours), (_, theirs) in rows:
        print(f"| {name:<46} | {ours:8.3f} | {theirs:11.3f} | {theirs / ours:14.2f} | {ours_first:17.2f} |")


if __name__ == "__main__":
    main()
