#!/usr/bin/env bash
# Sparsifiner's speed claim (issue 17 item 3) measured on this machine's CPU at keep rate 0.25: the sparse attention
# op against the dense attention it replaces (`visionzoo bench --ops`, eager and compiled) and the whole model
# against timm's dense DeiT-S (`visionzoo bench --vs`, timed alternately so that background load hits both alike),
# at 224 (197 tokens) and 384 (577 tokens). The runs are merged into one results file, which
# `python -m visionzoo.bench.speedup render` writes into docs/sparsifiner.md, docs/bench.md and the card.
# One torch thread: on a shared machine, two OpenMP threads stall at every barrier of the sparse path's many small
# parallel regions whenever the scheduler parks one of them, which measures the load, not the op.
# Each model comparison runs in PROCESSES separate processes (3 by default), ten or more alternating pairs each
# (--time-budget 12), and the table gives the median of their ratios: the ratio moves by a few percent from one
# process to the next (0.98x to 1.05x for the 384 eager pair in five runs on one idle machine; two identical DeiT-S
# in one process differ by 1-1.5%), more than the pairs within a process show.
# Usage: `bash tools/sparsifiner_speed.sh` from the checkout root (about 25 minutes on an idle machine).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$ROOT/output/sparsifiner-speed}
PROCESSES=${PROCESSES:-3}
RESULTS=${RESULTS:-results/sparsifiner_speed_cpu.json}
MODEL=vz_sparsifiner_deit_small
DENSE=deit_small_patch16_224
runs=()
for size_batch in "224 8" "384 4"; do
  read -r size batch <<<"$size_batch"
  settings=(--img-size "$size" --batch-size "$batch" --threads 1 --no-progress)
  "$PYTHON" -m visionzoo bench "$MODEL" --ops --compile "${settings[@]}" --time-budget 2 --output-dir "$OUT/ops-$size"
  runs+=("$OUT/ops-$size/ops.json")
  for mode in eager compiled; do
    compile=(); [ "$mode" = compiled ] && compile=(--compile)
    for process in $(seq "$PROCESSES"); do
      "$PYTHON" -m visionzoo bench "$MODEL" --vs "$DENSE" "${settings[@]}" "${compile[@]}" --no-train --time-budget 12 \
        --output-dir "$OUT/model-$size-$mode-$process"
      runs+=("$OUT/model-$size-$mode-$process/bench.json")
    done
  done
done
cd "$ROOT"
"$PYTHON" -m visionzoo.bench.speedup merge "$RESULTS" "${runs[@]}" --command-line "bash tools/sparsifiner_speed.sh"
"$PYTHON" -m visionzoo.bench.speedup render "$RESULTS" --markdown docs/sparsifiner.md --markdown docs/bench.md \
  --card visionzoo/cards/sparsifiner.yaml
