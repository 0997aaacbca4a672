"""The pipeline's sampling loop (transformer steps, VAE decode, resize) compiled ahead of time for a TPU slice:
`pixart-jax plan pipeline=PixArt-XL-2-1024-MS topology=v5e-8 [images=N] [steps=20] [sampler=dpm] [guidance=4.5]
[dtype=bfloat16] [fsdp=1]` prints per-chip HBM as the training plan does (exit code 1 when it does not fit).

The weights are abstract (nothing is loaded) in the preset's architecture with the SD VAE; T5 runs before the loop
and is not part of it. The images are split over the slice's chips as PixArtPipeline splits them over devices.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax import sharding
from pixart_jax.choices import DType
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import SD_VAE, AutoencoderKL
from pixart_jax.pipelines.guidance import Caption
from pixart_jax.pipelines.loop import LoopInputs, LoopSpec
from pixart_jax.pipelines.text_to_image import FSDP_RULES, PixArtPipeline
from pixart_jax.planning.plan import Plan, compile_plan
from pixart_jax.planning.topologies import Topology
from pixart_jax.samplers import make_sampler

PIPELINE_KEYS = ("pipeline", "images", "steps", "sampler", "guidance", "dtype", "fsdp")


def plan_pipeline(preset: str, topology: Topology, *, images=None, steps=20, sampler="dpm", guidance=4.5,
                  dtype="bfloat16", fsdp=1, vae_config=SD_VAE) -> Plan:
    """Compiles PixArtPipeline's jitted loop for `images` images (default: one per chip) of the preset's native
    size on `topology` (with an AutoencoderKL of `vae_config`) and returns its per-chip memory plan."""
    if preset not in PRESETS:
        raise ValueError(f"pipeline={preset!r} is not one of {sorted(PRESETS)}")
    cfg, compute = PRESETS[preset], DType(dtype).jax
    devices = topology.devices()
    images = len(devices) if images is None else int(images)
    mesh = sharding.make_mesh(-1, int(fsdp), sharding.data_parallel_devices(images, devices, int(fsdp)))
    transformer = nnx.eval_shape(lambda: PixArtTransformer(cfg, compute, rngs=nnx.Rngs(0)))
    vae = nnx.eval_shape(lambda: AutoencoderKL(vae_config, compute, rngs=nnx.Rngs(0)))
    sharding.place(transformer, mesh, FSDP_RULES if int(fsdp) > 1 else None)
    sharding.place(vae, mesh)
    pipe = PixArtPipeline(transformer, None, None, vae, make_sampler(sampler))
    rows = sharding.batch_sharding(mesh)
    row = lambda *shape: jax.ShapeDtypeStruct((images, *shape), jnp.float32, sharding=rows)  # noqa: E731
    caption = Caption(row(cfg.max_tokens, cfg.caption_channels), row(cfg.max_tokens))
    micro = (row(2), row(1)) if cfg.micro_conditions else (None, None)
    size = cfg.sample_size * vae.spatial_factor
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    spec = LoopSpec(steps=int(steps), sampler=pipe.sampler, guided=float(guidance) > 1, out_size=(size, size))
    with jax.set_mesh(mesh):
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
        inputs = LoopInputs(row(cfg.in_channels, cfg.sample_size, cfg.sample_size), caption, caption, *micro, scalar,
                            key, {})
        lowered = pipe.lower(inputs, spec)
        weights = {"transformer": nnx.to_pure_dict(nnx.state(transformer)), "vae": nnx.to_pure_dict(nnx.state(vae))}
        return compile_plan(lowered, topology, mesh, weights)
