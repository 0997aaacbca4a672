"""The allowed values of numeric settings, in interval notation ("[0, 1]", "(0, inf)", "[1, inf)"), and the check
of a config's settings against such a table."""
import math


def _bounds(interval):
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    return low, high, interval[0] == "[", interval[-1] == "]"


def contains(interval, value):
    """Whether `value` lies in `interval` ("(0, 1]": 0 < value <= 1)."""
    low, high, low_closed, high_closed = _bounds(interval)
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    return above and below


def describe(interval):
    """'at least 1' or '> 0' for an interval without an upper bound, else 'in [0, 1]'."""
    low, high, low_closed, _ = _bounds(interval)
    if math.isinf(high):
        return f"at least {low:g}" if low_closed else f"> {low:g}"
    return f"in {interval}"


def problems(settings, table):
    """'KEY must be ..., got VALUE' for each of `settings` ({dotted key: value}) that is a float but not finite, or
    lies outside its interval in `table` ({dotted key: interval}; keys `settings` lacks are skipped)."""
    found = []
    for key, value in settings.items():
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{key} must be a finite number, got {value}")
        elif key in table and not contains(table[key], value):
            found.append(f"{key} must be {describe(table[key])}, got {value}")
    return found
