"""Running the project's commands as a user does (console script, `python -m train.*` / `convert.*`), on this
checkout's code (PYTHONPATH: an editable install may point at another checkout), on the CPU."""
import os
import subprocess
import sys

from tests.helpers.paths import JAX_CACHE, ROOT

SCRIPT = os.path.join(os.path.dirname(sys.executable), "pixart-jax")


def command_env(devices=None, **extra):
    """The environment of a command: CPU only, this checkout first on the path, the tests' compilation cache;
    `devices` fake CPU devices (None: one, as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **extra)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_cli(*args, timeout=600, **env):
    """`pixart-jax ARGS...` to completion: the CompletedProcess with text stdout/stderr."""
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, env=command_env(**env),
                          timeout=timeout)


def run_module(module, *args, timeout=600, devices=None):
    """`python -m MODULE ARGS...` from the checkout to completion."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=command_env(devices), timeout=timeout)


def start_module(module, *args, devices=None):
    """`python -m MODULE ARGS...` started in the background, stdout and stderr merged (a Popen)."""
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=command_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
