"""Timing helpers shared by the benchmark scripts (same process, median of several runs)."""
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_seconds(fn, runs):
    """Median wall time of fn() over `runs` calls, after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(ours, theirs, runs):
    """((first call, median) of ours, (first call, median) of theirs): one warm-up call each (compilation
    included), then `runs` timed calls interleaved so that load from other processes hits both sides alike."""
    first, times = [], ([], [])
    for fn in (ours, theirs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first.append(time.perf_counter() - start)
    for _ in range(runs):
        for fn, record in zip((ours, theirs), times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            record.append(time.perf_counter() - start)
    return tuple((f, statistics.median(t)) for f, t in zip(first, times, strict=True))


def matmul_gflops(n=4096, runs=5):
    """Measured fp32 n x n matmul rate (GFLOP/s) of JAX/XLA and of PyTorch on this machine."""
    import torch

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a)
    mm = jax.jit(lambda x: x @ x)
    ta = torch.from_numpy(a)
    flops = 2 * n ** 3 / 1e9
    return flops / median_seconds(lambda: mm(ja), runs), flops / median_seconds(lambda: ta @ ta, runs)


VECTOR_EXTENSIONS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                     "amx_tile", "amx_bf16", "amx_int8")


def cpu_description():
    """This machine's CPU: lscpu's model name, its logical CPUs and the SIMD extensions it reports."""
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in model.splitlines() if line.startswith("Model name")),
                fields.get("model name", "unknown"))
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return (f"CPU: {name} ({family}), {os.cpu_count()} logical CPUs; vector extensions: "
            f"{' '.join(e for e in VECTOR_EXTENSIONS if e in flags) or 'none of ' + ', '.join(VECTOR_EXTENSIONS)}")


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
