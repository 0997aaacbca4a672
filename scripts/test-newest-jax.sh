#!/usr/bin/env bash
# Runs, under Python 3.12 with the newest JAX, the tests of what changes between JAX lines: meshes and shardings,
# multi-process runs, Orbax checkpoints and resume, the sampling loop (no torch there, so
# reference-parity tests would only skip; the whole suite runs on Python 3.11). Arguments replace the default test
# paths and go to pytest (e.g. `tests` to run the whole suite here).
set -euo pipefail
cd "$(dirname "$0")/.."
if python3.12 --version >/dev/null 2>&1; then
  python=python3.12
else  # pyenv installs it without putting it on PATH
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
fi
[ -n "$python" ] || { echo "python3.12 not found" >&2; exit 1; }
bash scripts/venv.sh .venv312 "$python" test-core,serve  # serve: tests/test_imports.py imports pixart_jax.serving
if [ "$#" -eq 0 ]; then
  set -- tests/test_sharding.py tests/training/test_multihost.py tests/training/test_checkpoints.py \
    tests/samplers/test_base.py tests/test_imports.py
fi
.venv312/bin/python -m pytest "$@"
