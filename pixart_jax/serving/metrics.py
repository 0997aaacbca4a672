"""Prometheus text metrics of the server (GET /metrics): requests by status, queue depth, images and requests per
forward, request latency. Updated from the event loop only (no locks)."""
import bisect
import collections

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus' text format lists them."""

    def __init__(self, name, help_text, buckets):
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self):
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        total = 0
        for bound, count in zip((*self.buckets, "+Inf"), self.counts):
            total += count
            yield f'{self.name}_bucket{{le="{bound}"}} {total}'
        yield f"{self.name}_sum {self.sum}"
        yield f"{self.name}_count {total}"


class Metrics:
    def __init__(self):
        self.requests = collections.Counter()  # by status code
        self.images = 0
        self.queue_depth = lambda: 0  # set by the batcher
        self.running = 0
        self.batch_size = Histogram("pixart_batch_size", "images per forward of the denoising loop", BATCH_BUCKETS)
        self.batch_requests = Histogram("pixart_batch_requests", "requests per forward", BATCH_BUCKETS)
        self.latency = Histogram("pixart_request_latency_seconds", "time from a generation request's arrival to "
                                 "its answer", LATENCY_BUCKETS)

    def text(self) -> str:
        lines = ["# HELP pixart_requests_total generation requests answered, by HTTP status",
                 "# TYPE pixart_requests_total counter"]
        lines += [f'pixart_requests_total{{status="{status}"}} {count}'
                  for status, count in sorted(self.requests.items())]
        lines += ["# HELP pixart_images_total images generated", "# TYPE pixart_images_total counter",
                  f"pixart_images_total {self.images}",
                  "# HELP pixart_queue_depth requests waiting for a forward", "# TYPE pixart_queue_depth gauge",
                  f"pixart_queue_depth {self.queue_depth()}",
                  "# HELP pixart_running_requests requests in the running forward",
                  "# TYPE pixart_running_requests gauge", f"pixart_running_requests {self.running}"]
        for histogram in (self.batch_size, self.batch_requests, self.latency):
            lines += histogram.lines()
        return "\n".join(lines) + "\n"
