#!/usr/bin/env bash
# The README's test command: create .venv, install visionzoo with its test extras, run the test suite.
# Extra pytest arguments pass through (e.g. `bash tools/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
