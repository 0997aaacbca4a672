"""Conversion programs (run as `python -m convert.<name>` from a checkout), built on pixart_jax's key maps."""
