"""Random seeds: every seed a user passes (a pipeline call, a command, a training config) is an integer in
[0, 2**32 - 1], which every backend accepts (jax.random.key, torch.Generator.manual_seed, NumPy)."""
import secrets

import numpy as np

MAX_SEED = 2**32 - 1


def check_seed(seed, name="seed") -> int:
    """`seed` as an int; a ValueError naming `name` and the value unless it is an integer in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**32 - 1 = {MAX_SEED}, got {seed!r}")
    return int(seed)


def random_seed() -> int:
    """A fresh seed for a call that passed none (31 bits, as every earlier release drew)."""
    return secrets.randbits(31)
