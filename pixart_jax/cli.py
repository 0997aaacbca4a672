"""The `pixart-jax` command line."""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from pixart_jax.config import PRESETS
from pixart_jax.samplers import DDIM
from pixart_jax.transformer import PixArtTransformer
from pixart_jax.vae import AutoencoderKL, VAEConfig

TINY_VAE = VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)


def to_uint8(images):
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return np.asarray(jnp.clip((images + 1) * 127.5, 0, 255).round().astype(jnp.uint8)).transpose(0, 2, 3, 1)


def sample_random(args):
    """DDIM with a tiny randomly initialised PixArt and VAE: checks the install end to end in seconds."""
    if args.size % 16:
        raise SystemExit(f"error: --size must be a multiple of 16 (8 for the VAE x 2 for the patches), got {args.size}")
    key = jax.random.key(args.seed)
    k_model, k_vae, k_text, k_noise = jax.random.split(key, 4)
    cfg = PRESETS["tiny"]
    model = PixArtTransformer(cfg, rngs=nnx.Rngs(k_model))
    vae = AutoencoderKL(TINY_VAE, rngs=nnx.Rngs(k_vae))
    # Random weights have a zero final layer (the reference init): re-draw it so the sample is not flat noise.
    model.final_layer.linear.kernel[...] = 0.02 * jax.random.normal(k_model, model.final_layer.linear.kernel.shape)
    lat = args.size // 8
    caption = jax.random.normal(k_text, (1, cfg.max_tokens, cfg.caption_channels))
    noise = jax.random.normal(k_noise, (1, cfg.in_channels, lat, lat))
    size = jnp.array([[args.size, args.size]], jnp.float32)
    graphdef, state = nnx.split((model, vae))

    @jax.jit
    def generate(state, noise):
        model, vae = nnx.merge(graphdef, state)
        eps = lambda x, t: model(x, t, caption, None, size, jnp.ones((1, 1)))[:, :cfg.in_channels]  # noqa: E731
        return vae.decode(DDIM().sample(eps, noise, args.steps) / TINY_VAE.scaling_factor)

    start = time.perf_counter()
    compiled = generate.lower(state, noise).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    images = jax.block_until_ready(compiled(state, noise))
    run_s = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(to_uint8(images)[0]).save(args.out)
    print(f"wrote {args.out} ({args.size}x{args.size}, {args.steps} DDIM steps): compile {compile_s:.1f} s, "
          f"run {run_s:.2f} s on {jax.devices()[0].platform}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pixart-jax", description="PixArt-α / PixArt-δ in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("sample-random", help=sample_random.__doc__)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/random.png")
    p.set_defaults(run=sample_random)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
