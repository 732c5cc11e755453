#!/usr/bin/env bash
# Export a zoo model (or the export matrix) with parity checks: a thin wrapper over `visionzoo export`.
#   bash tools/export.sh vz_shvit_s1 --format onnx --deploy --dynamic-batch
#   bash tools/export.sh --matrix 'vz_*' --smallest            # writes results/export_matrix.json
#   bash tools/export.sh --update-readme                        # README table from results/export_matrix.json
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" -m visionzoo export "$@"
