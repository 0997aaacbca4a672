"""Training programs (run as `python -m train.<program> CONFIG key=value ...` from a checkout)."""
