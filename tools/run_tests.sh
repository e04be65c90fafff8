#!/usr/bin/env bash
# Sets everything up (pip install of the package and its test extra) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -e ".[test]"
# TCMalloc, which `python -m stemseg_jax.main` preloads when present (stemseg_jax/allocator.py); optional.
if ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || echo "note: libtcmalloc-minimal4 not installed"
fi
python -m ruff check stemseg_jax configs tools tests
python -m pytest -q -n 2 --dist loadfile "$@"
