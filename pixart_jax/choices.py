"""Named choices as `str` enums (a config schema rejects any other value with the allowed list), and the
`DType` table every loader, config and command line uses."""
import enum

import jax.numpy as jnp


def choose(kind, value, what):
    """`value` as a member of the str Enum `kind`; a ValueError naming `what` and the allowed values otherwise."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[m.value for m in kind]}, got {value!r}") from None


class DType(enum.StrEnum):
    """Compute dtypes of the JAX models (matmuls and convolutions; parameters stay float32)."""
    float32 = "float32"
    bfloat16 = "bfloat16"

    @property
    def jax(self):
        return jnp.dtype(self.value)
