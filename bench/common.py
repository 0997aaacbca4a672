"""Timing helpers shared by the benchmark scripts (same process, median of several runs)."""
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def cpu_description():
    """`lscpu`'s model name, the CPU count and the vector extensions among VECTOR_FLAGS (from /proc/cpuinfo): every
    speed figure depends on them (e.g. torch's oneDNN uses AMX where XLA:CPU does not)."""
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    vector = [flag for flag in VECTOR_FLAGS if flag in flags]
    return f"{info.get('model name', 'unknown CPU')}, {os.cpu_count()} CPUs, {' '.join(vector) or 'no AVX2'}"


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


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
