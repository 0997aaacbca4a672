"""Refusing work that cannot fit in memory, before it starts, with the estimate and the limit in the message.

The estimate of a jitted program is XLA's own buffer assignment (`Compiled.memory_analysis()`: temporaries and
outputs), known once it is compiled and before it runs. The limit is an accelerator's free memory
(`Device.memory_stats()`), or on the CPU the host's available memory.
"""
import os

import jax

GiB = 2**30


class OutOfMemoryError(ValueError):
    """Work estimated to need more memory than there is; raised before it starts."""


def host_available_bytes() -> int:
    """The host's available memory (MemAvailable: free plus reclaimable caches), or its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(device: jax.Device) -> tuple[int, str]:
    """(bytes a new computation on `device` may use, what that limit is)."""
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return free, f"free on {device.platform} device {device.id} ({stats['bytes_limit'] / GiB:.1f} GiB in all)"
    return host_available_bytes(), "available on this host"


def compiled_bytes(compiled) -> int:
    """The memory a compiled program allocates when it runs (temporaries and outputs, less donated inputs); 0 when
    the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


def check_fits(needed: int, what: str, device: jax.Device | None = None) -> None:
    """Raises OutOfMemoryError when `needed` bytes for `what` exceed the limit of `device` (default: the first)."""
    limit, where = memory_limit(device or jax.devices()[0])
    if needed > limit:
        raise OutOfMemoryError(f"{what} needs an estimated {needed / GiB:.1f} GiB, more than the {limit / GiB:.1f} "
                               f"GiB of memory {where}: use a smaller size or fewer images")
