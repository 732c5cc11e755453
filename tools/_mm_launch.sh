#!/usr/bin/env bash
# Shared launcher of the det/seg tools: one process, or torchrun for several GPUs/nodes.
#   _mm_launch.sh {train|test} CONFIG [CHECKPOINT] [NPROC] [extra args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT as torchrun's static rendezvous expects.
set -euo pipefail
COMMAND=$1; shift
CONFIG=$1; shift
ARGS=("$CONFIG")
if [ "$COMMAND" = test ]; then ARGS+=("$1"); shift; fi
NPROC=1
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; fi
PYTHON=${PYTHON:-python}
if [ "$NPROC" -gt 1 ] || [ "${NNODES:-1}" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NPROC" -m visionzoo.mm "$COMMAND" "${ARGS[@]}" --launcher pytorch "$@"
fi
exec "$PYTHON" -m visionzoo.mm "$COMMAND" "${ARGS[@]}" "$@"
