#!/usr/bin/env bash
# Export a zoo model (or the export matrix) with parity checks: a thin wrapper over `visionzoo export`.
#   bash tools/export.sh vz_shvit_s1 --format onnx --deploy --dynamic-batch
#   bash tools/export.sh --checkpoint output/run/best.pth --format onnx   # a fine-tuned model, as trained
# From the checkout (the paths below are relative to the folder it is run from):
#   bash tools/export.sh --matrix 'vz_*' --smallest            # writes results/export_matrix.json
#   bash tools/export.sh --update-readme                        # README table from results/export_matrix.json
set -euo pipefail
# Relative paths in the arguments are the caller's: this runs in the folder it is called from and finds the
# checkout (its .venv, its visionzoo package) from its own location.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m visionzoo export "$@"
