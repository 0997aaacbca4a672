"""The torch device a pipeline runs on, checked before anything is loaded onto it: a ValueError says why this
process cannot use it (not a device name, or a backend this torch build or machine lacks)."""
import torch


def check_device(device) -> torch.device:
    """`device` (a name such as "cpu", "cuda", "cuda:1", "mps", or a torch.device) as a torch.device this process
    can use."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"not a torch device ({str(e).splitlines()[0]})") from None
    if parsed.type == "cpu":
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        raise ValueError(f"this torch has no {parsed.type.upper()} device (torch {torch.__version__})")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"this machine has {count} {parsed.type.upper()} device(s): no {parsed}")
    return parsed
