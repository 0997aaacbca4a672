#!/usr/bin/env bash
# The TPU-planning tests (tests/planning/test_plan.py: ahead-of-time compiles for TPU slices, no TPU needed) in their own
# environment .venv-tpu (Python 3.11 + the [tpu] extra, which installs the libtpu matching jax). If libtpu cannot
# be installed they are skipped, saying why. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Executables compiled for compile-only TPU devices cannot be read back from JAX's persistent cache (it needs a
# TPU client): the cache would only store entries and warn on every read.
export JAX_ENABLE_COMPILATION_CACHE=false
if bash scripts/venv.sh .venv-tpu python3 tpu,test-core; then
  .venv-tpu/bin/python -m pytest tests/planning/test_plan.py "$@"
else
  echo "libtpu could not be installed (pip install -e '.[tpu,test-core]' failed above): tests/planning/test_plan.py skipped"
fi
