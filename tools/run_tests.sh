#!/usr/bin/env bash
# Sets everything up (pip install of the package and its test extra) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -e ".[test]"
python -m ruff check stemseg_jax configs tools tests
python -m pytest -q -n 2 --dist loadfile "$@"
