#!/usr/bin/env bash
# The README's test command: create .venv, install visionzoo with every extra the tests exercise
# (dev, bench, export, mm, wandb, points) and mmcv 2.1.0 with its compiled ops, then run the test suite.
#
# mmcv comes from a wheelhouse when VZ_MMCV_WHEELHOUSE names one (CI sets ../shared/wheelhouse),
# otherwise tools/install_mmcv.sh builds it from source (about 20 minutes on 2 cores, once per venv).
# Extra arguments go to pytest: `bash tools/test.sh -m slow`, `bash tools/test.sh -m ''` (everything).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,bench,export,mm,wandb,points]'
PYTHON=.venv/bin/python bash tools/install_mmcv.sh ${VZ_MMCV_WHEELHOUSE:+--wheelhouse "$VZ_MMCV_WHEELHOUSE"}
exec .venv/bin/python -m pytest "$@"
