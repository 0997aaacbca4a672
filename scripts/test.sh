#!/usr/bin/env bash
# Sets up .venv (Python 3.11, torch from the local 2.13 CPU wheel, diffusers, transformers), lints with the pinned
# ruff, and runs the whole test suite in two pytest workers, one test file each at a time (pytest-xdist: while one
# waits on a command it started or compiles on one core, the other runs; -n 0 runs in one process). Extra
# arguments go to pytest (e.g. -k parity, -m "not slow", -n 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh .venv python3 test
.venv/bin/ruff check .
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"
