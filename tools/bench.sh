#!/usr/bin/env bash
# Benchmark zoo models: `bash tools/bench.sh --default-set`, `bash tools/bench.sh 'vz_shvit_*' --vs timm`.
# Every option of `visionzoo bench --help` passes through; results go to output/bench/ unless --output-dir says.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m visionzoo bench "$@"
