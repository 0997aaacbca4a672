"""Per-stage peak memory of a pipeline call: on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`,
what the weights and activations need), on the CPU the process's peak resident set size (Linux: VmHWM, reset at
each stage through /proc/self/clear_refs; elsewhere the process's peak so far)."""
import contextlib
import dataclasses
import resource
import sys
import time

import torch

_STATUS = "/proc/self/status"


@dataclasses.dataclass(frozen=True)
class StageMemory:
    stage: str         # "encode", "denoise" or "decode" (each includes loading its model with low_memory)
    peak_bytes: int
    measure: str       # what peak_bytes is: "cuda max_memory_allocated", "peak RSS" or "process peak RSS"
    seconds: float


def _rss_peak():
    """Peak resident set size in bytes since the last reset (VmHWM), or None where /proc is not there."""
    try:
        with open(_STATUS) as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def _reset_rss_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _process_peak():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class MemoryStages:
    """`with stages.stage("encode"): ...` records that stage's peak on `device` when `enabled`."""

    def __init__(self, device, enabled=True):
        self.device, self.enabled, self.stages = torch.device(device), enabled, []

    @contextlib.contextmanager
    def stage(self, name):
        if not self.enabled:
            yield
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        per_stage = not cuda and _reset_rss_peak() and _rss_peak() is not None
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            peak, measure = torch.cuda.max_memory_allocated(self.device), "cuda max_memory_allocated"
        elif per_stage:
            peak, measure = _rss_peak(), "peak RSS"
        else:
            peak, measure = _process_peak(), "process peak RSS"
        self.stages.append(StageMemory(name, peak, measure, time.perf_counter() - start))


def format_report(stages):
    """The stages as a small table (GiB)."""
    lines = [f"{'stage':<8} {'peak GiB':>9}  {'seconds':>8}  measure"]
    lines += [f"{s.stage:<8} {s.peak_bytes / 2**30:9.2f}  {s.seconds:8.1f}  {s.measure}" for s in stages]
    return "\n".join(lines)
