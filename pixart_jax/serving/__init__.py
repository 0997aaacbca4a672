"""pixart-jax serve: an HTTP server for a PixArt pipeline (the OpenAI images API, progress events, dynamic batching,
limits, metrics, a web page). FastAPI and uvicorn: pip install "pixart-jax[serve]"."""
