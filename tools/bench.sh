#!/usr/bin/env bash
# Benchmark zoo models: `bash tools/bench.sh --default-set`, `bash tools/bench.sh 'vz_shvit_*' --vs timm`.
# Every option of `visionzoo bench --help` passes through; results go to output/bench/ (in the folder it is run
# from) unless --output-dir says. --render-readme edits README.md of the current folder unless --readme says.
set -euo pipefail
# Relative paths in the arguments are the caller's: this runs in the folder it is called from and finds the
# checkout (its .venv, its visionzoo package) from its own location.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m visionzoo bench "$@"
