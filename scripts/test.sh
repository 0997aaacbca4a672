#!/usr/bin/env bash
# Sets up .venv (Python 3.11, torch from the local 2.13 CPU wheel, diffusers, transformers), lints with the pinned
# ruff, and runs the whole test suite. Extra arguments go to pytest (e.g. -k parity, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh .venv python3 test
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
