"""Dynamic batching: queued jobs with the same signature (binned size, steps, sampler, guidance, η, adapter weights)
are gathered for up to `wait_s` after the oldest arrived, up to `max_batch` images, and run as one forward in the
one worker thread (JAX and torch calls block; the event loop stays free). A bounded queue (429 when full); a dropped
ticket (its client left, or timed out) leaves the queue before it runs."""
import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from pixart_jax.serving.errors import APIError


@dataclasses.dataclass(eq=False)
class Ticket:
    """A queued job (parsing.Job), its result `future` (each image list) and `on_step(steps done)`."""
    job: object
    future: asyncio.Future
    on_step: Callable[[int], None] | None
    arrived: float
    steps: int = 0


class Batcher:
    def __init__(self, metrics, *, max_batch, wait_s, max_queue):
        self.metrics, self.max_batch, self.wait_s, self.max_queue = metrics, max_batch, wait_s, max_queue
        self.pending: list[Ticket] = []
        self.run_batch = None  # engine.run, set once the model is loaded
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pixart-pipeline")
        self._task = None
        metrics.queue_depth = lambda: len(self.pending)

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self):
        """Ends the dispatcher (after the running forward) and the worker thread."""
        if self._task is not None:
            self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def in_worker(self, fn, *args):
        """Awaitable fn(*args) in the worker thread (loading and warming the model too: one thread runs it all)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, job, on_step=None) -> Ticket:
        if len(self.pending) >= self.max_queue:
            raise APIError(429, f"the queue is full ({self.max_queue} requests waiting): retry later")
        loop = asyncio.get_running_loop()
        ticket = Ticket(job, loop.create_future(), on_step, time.monotonic())
        self.pending.append(ticket)
        self._wake.set()
        return ticket

    def drop(self, ticket):
        """Takes a ticket out of the queue (a running one finishes; its result is not read)."""
        if ticket in self.pending:
            self.pending.remove(ticket)
        if not ticket.future.done():
            ticket.future.cancel()

    async def _dispatch(self):
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._gather()
            if batch:
                await self._run(batch)

    async def _gather(self) -> list[Ticket]:
        """The oldest ticket and the compatible ones queued by its deadline (or until max_batch images)."""
        first = self.pending[0]
        deadline = first.arrived + self.wait_s
        while True:
            if first not in self.pending:  # dropped while waiting
                return []
            batch = [first]
            images = first.job.images
            for ticket in self.pending[1:]:
                if ticket.job.signature == first.job.signature and images + ticket.job.images <= self.max_batch:
                    batch.append(ticket)
                    images += ticket.job.images
            remaining = deadline - time.monotonic()
            if images >= self.max_batch or remaining <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    async def _run(self, batch):
        for ticket in batch:
            self.pending.remove(ticket)
        loop = asyncio.get_running_loop()
        by_job = {id(ticket.job): ticket for ticket in batch}

        def stepped(jobs):  # on the event loop
            for job in jobs:
                ticket = by_job[id(job)]
                ticket.steps += 1
                if ticket.on_step is not None and not ticket.future.done():
                    ticket.on_step(ticket.steps)

        self.metrics.batch_size.observe(sum(t.job.images for t in batch))
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.running = len(batch)
        try:
            results = await self.in_worker(self.run_batch, [t.job for t in batch],
                                           lambda jobs: loop.call_soon_threadsafe(stepped, jobs))
        except Exception as e:  # noqa: BLE001 - every waiting client gets the error
            error = APIError(400, str(e)) if isinstance(e, ValueError) else APIError(500, f"generation failed: {e}")
            results = [error] * len(batch)
        finally:
            self.metrics.running = 0
        for ticket, result in zip(batch, results):
            if ticket.future.done():
                continue
            if isinstance(result, APIError):
                ticket.future.set_exception(result)
            else:
                ticket.future.set_result(result)
