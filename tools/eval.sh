#!/usr/bin/env bash
# Evaluate: tools/eval.sh MODEL --checkpoint PATH --data-dir DIR [--ema] [--input-size N] [--crop-pct F] ...
# Prints and writes top-1, top-5, loss, parameters and images/s (JSON beside the checkpoint unless --output).
# A published checkpoint: tools/eval.sh validate NAME[.TAG] --data DIR [--output FILE] evaluates it
# (pretrained=True) with the tag's own eval transform, beside the paper's top-1 from its model card.
set -euo pipefail
# Relative paths in the arguments are the caller's: this runs in the folder it is called from and finds the
# checkout (its .venv, its visionzoo package) from its own location.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = validate ]; then
    shift
    exec "$PYTHON" -m visionzoo validate "$@"
fi
exec "$PYTHON" -m visionzoo eval "$@"
