"""Load test of `pixart-jax serve` on loopback: REQUESTS generation requests (the model's default settings, each its
own prompt and seed) from 1, 4 and 16 concurrent clients, dynamic batching on (--max-batch MAX_BATCH) vs off
(--max-batch 1); throughput, p50 and p99 latency, failures and the mean batch size, with the CPU it ran on. The
server warms every batch size it cuts to at start; each client count first runs an untimed round.

  python bench/serve.py [--model DIR] [--requests 200] [--clients 1 4 16] [--max-batch 16]

Without --model: a tiny random PixArt (tests' stand-ins; 128 px, or 256 px with --sample-size 32) with an LCM
scheduler (4 steps, no CFG by default) written to a temporary folder. Bounded: every request times out after
--timeout-s; the server binds 127.0.0.1.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import cpu_description  # noqa: E402
from pixart_jax.testing.server_client import free_port, metric, request, wait_for  # noqa: E402


def tiny_model(directory, sample_size) -> str:
    from flax import nnx

    from pixart_jax.models.transformer import PixArtTransformer
    from pixart_jax.models.transformer_config import PRESETS
    from pixart_jax.samplers import LCM
    from pixart_jax.testing.random_weights import redraw_nnx
    from pixart_jax.testing.stand_ins import save_pipeline

    transformer = redraw_nnx(PixArtTransformer(PRESETS["tiny"].replace(sample_size=sample_size), rngs=nnx.Rngs(0)), 0)
    return save_pipeline(os.path.join(directory, "tiny"), transformer, LCM())


def load(port, requests, clients, timeout) -> dict:
    """`requests` generations from `clients` threads (each its own prompt and seed): wall time, latencies, fails."""
    latencies, failures, taken, lock = [], [], [0], threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                if taken[0] >= requests:
                    return
                taken[0] += 1
                i = taken[0]
            body = {"prompt": f"a small red circle number {i}", "seed": i}
            start = time.perf_counter()
            connection.request("POST", "/v1/images/generations", json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            (latencies if response.status == 200 else failures).append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.perf_counter() - start, "latencies": sorted(latencies), "failures": len(failures)}


def run_mode(model, max_batch, args) -> list[dict]:
    """One server (max_batch images per forward); a row per client count."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, "-m", "pixart_jax.cli", "serve", "--model", model, "--port", str(port),
                   "--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", "256",
                   "--timeout-s", str(args.timeout_s)]
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)  # this checkout's pixart_jax
        try:
            wait_for(lambda: _healthy(port) or server.poll() is not None, timeout=600)
            rows = []
            for clients in args.clients:
                load(port, 2 * clients, clients, args.timeout_s)  # untimed
                before = (metric(port, "pixart_batch_size_sum"), metric(port, "pixart_batch_size_count"))
                result = load(port, args.requests, clients, args.timeout_s)
                after = (metric(port, "pixart_batch_size_sum"), metric(port, "pixart_batch_size_count"))
                result.update(clients=clients, max_batch=max_batch,
                              mean_batch=(after[0] - before[0]) / max(1, after[1] - before[1]))
                rows.append(result)
                print(_row(result, args.requests), flush=True)
        finally:
            server.terminate()
            server.wait(120)
    return rows


def _healthy(port):
    try:
        return request(port, "GET", "/health", timeout=5)[0] == 200
    except OSError:
        return False


def _row(r, requests):
    lat = r["latencies"] or [float("nan")]
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return (f"| {'on' if r['max_batch'] > 1 else 'off'} ({r['max_batch']}) | {r['clients']} | {requests} | "
            f"{r['failures']} | {requests / r['wall']:.2f} | {statistics.median(lat):.2f} | {p99:.2f} | "
            f"{r['mean_batch']:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline folder (default: a tiny random one)")
    parser.add_argument("--sample-size", type=int, default=16,
                        help="latent side of the random model without --model (16: 128 px images, 32: 256 px)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or tiny_model(scratch, args.sample_size)
        print(f"{model}: its default settings and size; {cpu_description()}")
        print("| batching (max images) | clients | requests | failed | images/s | p50 s | p99 s | mean batch |")
        print("|---|---|---|---|---|---|---|---|")
        off = run_mode(model, 1, args)
        on = run_mode(model, args.max_batch, args)
    for a, b in zip(on, off):
        print(f"{a['clients']} clients: batching {b['wall'] / a['wall']:.2f}x the throughput of one at a time")


if __name__ == "__main__":
    main()
