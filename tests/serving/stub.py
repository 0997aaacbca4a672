"""A stand-in engine for the server's queue, batching and limit tests: the real ModelInfo of a tiny 256-px model,
and `run` that records each batch and blocks until the test opens its gate, returning blank images."""
import threading

from PIL import Image

from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.serving.model_info import ModelInfo, bucket_sizes

CFG = PRESETS["tiny"].replace(sample_size=32)


class StubEngine:
    batched = False  # warmed for one image only

    def __init__(self, settings, loras=None):
        self.info = ModelInfo("stub", "jax", bucket_sizes(CFG, 8), ("dpm", "ddim"), "dpm", (),
                              dict(loras or {}), CFG, 8, settings.limits.max_steps)
        self.gate = threading.Event()
        self.gate.set()
        self.batches = []

    def run(self, jobs, on_step):
        self.batches.append([job.settings["prompt"] for job in jobs])
        self.gate.wait(60)
        for _ in range(jobs[0].request.num_inference_steps):
            on_step(jobs)
        return [[Image.new("RGB", (8, 8))] * job.images for job in jobs]
