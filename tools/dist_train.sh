#!/usr/bin/env bash
# Train with DistributedDataParallel: tools/dist_train.sh NPROC CONFIG [section.key=value ...] [--data-dir DIR] ...
# One node: NPROC processes (one per GPU; gloo on the CPU). Several nodes: set NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT on every node (torchrun's static rendezvous), or RDZV_ENDPOINT (host:port) for the elastic c10d one.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 NPROC CONFIG [section.key=value ...] [--data-dir DIR] [--output DIR] [--resume auto] [--wandb]" >&2
    exit 2
fi
NPROC=$1
shift
# Relative paths in the arguments are the caller's: this runs in the folder it is called from and finds the
# checkout (its .venv, its visionzoo package) from its own location.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NNODES=${NNODES:-1}
if [ -n "${RDZV_ENDPOINT:-}" ]; then
    RENDEZVOUS=(--rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-visionzoo}")
else
    RENDEZVOUS=(--node-rank="${NODE_RANK:-0}" --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}")
fi
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" "${RENDEZVOUS[@]}" \
    -m visionzoo train "$@"
