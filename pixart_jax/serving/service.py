"""The server's state between HTTP and the pipeline: the model loaded and warmed in the worker thread (/health says
ok after), jobs submitted to the batcher and awaited under the per-request timeout, a client that leaves dropped
from the queue, answers in the OpenAI images shape."""
import asyncio
import json
import logging
import time

from pixart_jax.serving.batcher import Batcher
from pixart_jax.serving.errors import APIError
from pixart_jax.serving.images import png_base64
from pixart_jax.serving.metrics import Metrics
from pixart_jax.serving.parsing import parse_generation
from pixart_jax.serving.schema import GenerationBody

logger = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.05


class Service:
    def __init__(self, settings, load_engine):
        self.settings, self._load_engine = settings, load_engine
        self.metrics = Metrics()
        self.engine = self.batcher = None
        self.ready = False
        self.started = time.time()
        self.failed = None  # the load error's message
        self.on_failure = lambda: None  # what stops the server (set by the command)

    async def start(self):
        """Starts the batcher and loads the model in the background (/health answers 503 meanwhile)."""
        s = self.settings
        self.batcher = Batcher(self.metrics, max_batch=s.max_batch, wait_s=s.batch_wait_ms / 1000,
                               max_queue=s.max_queue)
        self.batcher.start()
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def stop(self):
        self._loading.cancel()
        await self.batcher.stop()

    async def _load(self):
        try:
            self.engine = await self.batcher.in_worker(self._load_engine, self.settings)
            self.batcher.run_batch = self.engine.run
            warmup = self.settings.warmup
            for size in (self.engine.info.defaults["size"],) if warmup is None else warmup:
                job = parse_generation(GenerationBody(prompt="warm-up", size=size, seed=0), self.info,
                                       self.settings.limits)
                started = time.perf_counter()
                await self.batcher.in_worker(self.engine.run, [job], lambda jobs: None)
                logger.info("warmed %s in %.1f s", size, time.perf_counter() - started)
        except Exception as e:  # noqa: BLE001 - reported by /health and the log, then the server stops
            self.failed = f"{type(e).__name__}: {e}"
            logger.error("loading %s failed: %s", self.settings.model, self.failed)
            self.on_failure()
            return
        self.ready = True

    @property
    def info(self):
        return self.engine.info

    def require_ready(self):
        if not self.ready:
            raise APIError(503, "the model is loading" if self.failed is None else f"the model failed to load: "
                           f"{self.failed}")

    async def generate(self, job, request) -> dict:
        """The answer to `job`; APIError 429 (queue full), 504 (timeout), 499 (the client left)."""
        started = time.monotonic()
        ticket = self.batcher.submit(job)
        watch = asyncio.create_task(_disconnected(request))
        try:
            done, _ = await asyncio.wait({ticket.future, watch}, timeout=self.settings.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if ticket.future not in done:
                raise APIError(499 if watch in done else 504, "the client disconnected" if watch in done else
                               f"the request took longer than {self.settings.timeout_s:g} s")
            return await self._answer(job, ticket.future.result(), started)
        finally:
            watch.cancel()
            self.batcher.drop(ticket)

    def submit_stream(self, job):
        """(ticket, queue of progress steps) of a streamed job, submitted now (so a full queue is a 429)."""
        steps = asyncio.Queue()
        return self.batcher.submit(job, steps.put_nowait), steps

    async def events(self, job, ticket, steps):
        """Server-sent events of a streamed job: progress per step, then the result or an error."""
        started, total = time.monotonic(), job.request.num_inference_steps
        deadline = started + self.settings.timeout_s
        try:
            while not ticket.future.done():
                get = asyncio.ensure_future(steps.get())
                await asyncio.wait({ticket.future, get}, timeout=max(0.0, deadline - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if not ticket.future.done():
                        raise APIError(504, f"the request took longer than {self.settings.timeout_s:g} s")
                else:
                    yield _event("progress", {"step": get.result(), "steps": total})
            while not steps.empty():
                yield _event("progress", {"step": steps.get_nowait(), "steps": total})
            yield _event("result", await self._answer(job, ticket.future.result(), started))
        except APIError as e:
            self.metrics.requests[e.status] += 1
            yield _event("error", e.body())
        finally:
            self.batcher.drop(ticket)

    async def _answer(self, job, images, started) -> dict:
        encoded = await asyncio.to_thread(lambda: [png_base64(image) for image in images])
        self.metrics.requests[200] += 1
        self.metrics.images += len(images)
        self.metrics.latency.observe(time.monotonic() - started)
        seed = job.request.seed
        return {"created": int(time.time()), "seed": seed, "settings": job.settings,
                "data": [{"b64_json": data, "seed": seed} for data in encoded]}


async def _disconnected(request):
    """Returns once the HTTP client has gone."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


def _event(name, data) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
