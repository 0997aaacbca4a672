#!/usr/bin/env bash
# Usage: scripts/venv.sh DIR PYTHON EXTRAS
# Creates (or updates) a virtual environment DIR with PYTHON and installs this checkout with EXTRAS into it.
# Skips pip when pyproject.toml has not changed since the last install into DIR.
set -euo pipefail
dir=$1 python=$2 extras=$3
cd "$(dirname "$0")/.."
[ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
stamp="$dir/.installed-$(sha1sum pyproject.toml | cut -c1-12)-${extras//[^a-z0-9-]/_}"
if [ ! -f "$stamp" ]; then
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
