#!/usr/bin/env bash
# Runs the suite under Python 3.12 with the newest JAX (no torch there: reference-parity tests skip), so the
# code stays correct on both JAX lines. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if python3.12 --version >/dev/null 2>&1; then
  python=python3.12
else  # pyenv installs it without putting it on PATH
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
fi
[ -n "$python" ] || { echo "python3.12 not found" >&2; exit 1; }
bash scripts/venv.sh .venv312 "$python" test-core
.venv312/bin/python -m pytest "$@"
