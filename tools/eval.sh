#!/usr/bin/env bash
# Evaluate: tools/eval.sh MODEL --checkpoint PATH --data-dir DIR [--ema] [--input-size N] [--crop-pct F] ...
# Prints and writes top-1, top-5, loss, parameters and images/s (JSON beside the checkpoint unless --output).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
exec "$PYTHON" -m visionzoo eval "$@"
