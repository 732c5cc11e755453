#!/usr/bin/env bash
# Train on one device: tools/train.sh CONFIG [section.key=value ...] [--data-dir DIR] [--output DIR] [--resume auto] [--wandb]
# CONFIG is a recipe YAML or a model name whose recipe is configs/cls/<name>.yaml (e.g. vz_shvit_s1).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
exec "$PYTHON" -m visionzoo train "$@"
