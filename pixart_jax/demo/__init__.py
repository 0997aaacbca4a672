"""The embedded demo (`pixart-jax demo`): a procedural captioned shapes dataset, a procedural text-image alignment
checker, the demo's linear patch autoencoder and the script that trains, distils and scores (run.py)."""
