"""Reusable training code: configs, losses (diffusion, LCD), jitted sharded train steps, checkpoints, the data
pipeline and the loop that the programs in train/ run."""
