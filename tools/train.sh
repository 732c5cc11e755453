#!/usr/bin/env bash
# Train on one device: tools/train.sh CONFIG [section.key=value ...] [--data-dir DIR] [--output DIR] [--resume auto] [--wandb]
# CONFIG is a recipe YAML or a model name whose recipe is configs/cls/<name>.yaml (e.g. vz_shvit_s1).
set -euo pipefail
# Relative paths in the arguments are the caller's: this runs in the folder it is called from and finds the
# checkout (its .venv, its visionzoo package) from its own location.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m visionzoo train "$@"
