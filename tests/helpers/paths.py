"""Where the tests find the checkout, its configs and the JAX compilation cache, wherever the test file sits."""
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# JAX's persistent compilation cache of the tests and the commands they run: JAX_COMPILATION_CACHE_DIR, or an
# ignored folder of the checkout.
JAX_CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(ROOT / ".cache" / "jax")
