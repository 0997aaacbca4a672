"""Ahead-of-time plan of a training config on a TPU slice: `python -m train.plan CONFIG topology=v5e:2x4
[program=pretrain|lcm] [key=value ...]` compiles the config's real train step for the slice (no TPU needed, only
libtpu: `pip install 'pixart-jax[tpu]'`) and prints per-chip HBM; exit code 1 when it does not fit. See
pixart_jax/planning/command.py.
"""
import sys

from pixart_jax.planning.command import main

if __name__ == "__main__":
    sys.exit(main())
