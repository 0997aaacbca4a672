"""Test setup: CPU platform with 8 fake devices and a persistent compilation cache (JAX_COMPILATION_CACHE_DIR, or
an ignored folder of the checkout)."""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

from tests.helpers.paths import JAX_CACHE  # noqa: E402

jax.config.update("jax_compilation_cache_dir", JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
