"""One PixArt training step: our jitted JAX step vs a PyTorch reference step, XL/2 at 256 px, fp32, same run.

  python bench/train_step.py [--batch 2] [--steps 3] [--size 256]

The reference is diffusers' `PixArtTransformer2DModel` with the same loss (ε-MSE + learned-σ VB, caption
dropout), torch AdamW (eps 1e-10, wd 0.03), global-norm clipping and an EMA update: what one optimizer step of the
PixArt recipe does. Each side runs in its own subprocess (so each peak host memory is its own), one after the
other; the table gives seconds per step (median after one warm-up step), images/s, their ratio and peak RSS.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import print_table  # noqa: E402

PRESET = "PixArt-XL-2-256x256"


def make_batch(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    lat = size // 8
    return {"caption": rng.standard_normal((batch, 120, 4096)).astype(np.float32),
            "mask": np.ones((batch, 120), np.int32),
            "mean": rng.standard_normal((batch, 4, lat, lat)).astype(np.float32),
            "std": np.full((batch, 4, lat, lat), 0.1, np.float32),
            "img_hw": np.full((batch, 2), size, np.float32), "aspect_ratio": np.ones((batch, 1), np.float32)}


def time_steps(step, steps):
    step()  # warm-up (and compilation)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_program(chosen, batch, steps, inspect=None):
    """(median seconds per step, inspect's result) of the training program `chosen` on one device with `batch`
    (host arrays); `inspect(train_step, state, batch)`, if given, runs before the timed steps."""
    import jax

    from pixart_jax.sharding import device_batch, make_mesh

    mesh = make_mesh(1, 1, jax.devices()[:1])
    model = chosen.model()
    with jax.set_mesh(mesh):
        train_step = chosen.step(model, mesh)
        state, _ = chosen.state(model, mesh)
        del model
        batch = device_batch(batch, mesh)
        found = inspect(train_step, state, batch) if inspect else None
        holder = [state]

        def step():
            holder[0], metrics = train_step(holder[0], batch)
            jax.block_until_ready(metrics)
        return time_steps(step, steps), found


def run_jax(args):
    from pixart_jax.training.config import load_config
    from pixart_jax.training.pretraining import Pretraining

    program = Pretraining(load_config(None, ["workdir=unused", "steps=1", "checkpoint_every=1", "seed=0",
                                             f"model.preset={PRESET}", "optimizer.warmup_steps=0",
                                             f"data.batch_size={args.batch}"]))
    return timed_program(program, make_batch(args.batch, args.size), args.steps)[0]


def torch_loss(model, batch, tables, null_caption, gen, dropout=0.1):
    """The PixArt loss (spec §2.2) in PyTorch, for the reference step."""
    import torch

    b = batch["mean"].shape[0]
    x0 = 0.18215 * (batch["mean"] + batch["std"] * torch.randn(batch["mean"].shape, generator=gen))
    t = torch.randint(0, 1000, (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(b, generator=gen) < dropout
    captions = torch.where(drop[:, None, None], null_caption[None], batch["caption"])
    g = {k: v[t].float().view(b, 1, 1, 1) for k, v in tables.items()}
    x_t = g["sqrt_ac"] * x0 + g["sqrt_1mac"] * noise
    out = model(x_t, encoder_hidden_states=captions, timestep=t, encoder_attention_mask=batch["mask"],
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    eps, v = out[:, :4], out[:, 4:]
    mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    x0_pred = g["sqrt_recip_ac"] * x_t - g["sqrt_recipm1_ac"] * eps.detach()
    true_mean = g["c1"] * x0 + g["c2"] * x_t
    model_mean = g["c1"] * x0_pred + g["c2"] * x_t
    frac = (v + 1) / 2
    log_var = frac * g["log_beta"] + (1 - frac) * g["log_var_clipped"]
    lv1 = g["log_var_clipped"]
    kl = 0.5 * (-1 + log_var - lv1 + torch.exp(lv1 - log_var) + (true_mean - model_mean) ** 2 * torch.exp(-log_var))
    vb = kl.mean(dim=(1, 2, 3)) / np.log(2)
    cdf = lambda z: 0.5 * (1 + torch.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    inv_std = torch.exp(-0.5 * log_var)
    upper, lower = cdf(inv_std * (x0 - model_mean + 1 / 255)), cdf(inv_std * (x0 - model_mean - 1 / 255))
    logp = torch.where(x0 < -0.999, upper.clamp(min=1e-12).log(), torch.where(
        x0 > 0.999, (1 - lower).clamp(min=1e-12).log(), (upper - lower).clamp(min=1e-12).log()))
    nll = -logp.mean(dim=(1, 2, 3)) / np.log(2)
    return (mse + torch.where(t == 0, nll, vb)).mean()


def run_torch(args):
    import torch
    from diffusers import PixArtTransformer2DModel

    from pixart_jax.models.transformer_config import PRESETS
    from pixart_jax.training.loss import diffusion_tables

    torch.manual_seed(0)
    config = PRESETS[PRESET].to_diffusers()
    config.pop("_class_name")
    model = PixArtTransformer2DModel(**config).train()
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.03)
    t = diffusion_tables()
    tables = {k: torch.from_numpy(np.asarray(v)) for k, v in {
        "sqrt_ac": t.sqrt_alphas_cumprod, "sqrt_1mac": t.sqrt_one_minus_alphas_cumprod,
        "sqrt_recip_ac": t.sqrt_recip_alphas_cumprod, "sqrt_recipm1_ac": t.sqrt_recipm1_alphas_cumprod,
        "c1": t.posterior_mean_coef1, "c2": t.posterior_mean_coef2, "log_beta": t.log_betas,
        "log_var_clipped": t.posterior_log_variance_clipped}.items()}
    batch = {k: torch.from_numpy(v) for k, v in make_batch(args.batch, args.size).items()}
    null_caption = torch.randn(120, 4096) / 64
    gen = torch.Generator().manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        torch_loss(model, batch, tables, null_caption, gen).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        with torch.no_grad():
            for k, p in model.named_parameters():
                ema[k].mul_(0.9999).add_(p, alpha=1 - 0.9999)
    return time_steps(step, args.steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--size", type=int, default=256, help="image size (latent = size / 8)")
    parser.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        start = time.perf_counter()
        seconds = (run_jax if args.side == "jax" else run_torch)(args)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(json.dumps({"seconds": seconds, "peak_gib": peak_gib, "total_s": time.perf_counter() - start}))
        return
    results = {}
    for side in ("jax", "torch"):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--batch", str(args.batch),
                              "--steps", str(args.steps), "--size", str(args.size)],
                             capture_output=True, text=True, check=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    jax_s, torch_s = results["jax"]["seconds"], results["torch"]["seconds"]
    print(f"{PRESET} train step, fp32, {args.size}x{args.size} px ({args.size // 8}x{args.size // 8} latent), "
          f"batch {args.batch}, median of {args.steps} steps after a warm-up, {os.cpu_count()} cores")
    rows = [[name, f"{r['seconds']:.2f}", f"{args.batch / r['seconds']:.3f}", f"{r['peak_gib']:.1f}",
             f"{r['total_s']:.0f}"] for name, r in (("JAX (ours)", results["jax"]),
                                                   ("PyTorch (diffusers)", results["torch"]))]
    rows.append(["ratio torch/ours", f"{torch_s / jax_s:.2f}x", f"{torch_s / jax_s:.2f}x", "", ""])
    print_table(["step", "s/step", "images/s", "peak RSS GiB", "wall s (incl. build)"], rows)


if __name__ == "__main__":
    main()
