#!/usr/bin/env bash
# S2AFormer's speed claim ("faster than comparable efficient ViTs on GPU and non-GPU platforms") checked on this
# machine's CPU: each variant is timed alternately against a timm efficient ViT of similar MACs (`visionzoo bench
# --vs NAME`, which times the two in turns so that background load hits both alike), every pair with the same
# settings. The runs are merged into one results file, which `visionzoo bench --render-readme` renders into
# docs/s2aformer.md (between its bench markers). Usage: `bash tools/s2aformer_speed.sh` from the checkout root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-output/s2aformer-speed}
RESULTS=${RESULTS:-$ROOT/results/bench_cpu_s2aformer_vs_b8.json}
SETTINGS=(--batch-size 8 --img-size 224 --deploy --no-train --time-budget 6 --no-progress)
# zoo model, baseline: timm models of similar MACs at 224 (ours 0.43 / 0.65 / 1.38 GMACs).
PAIRS=(
  "vz_s2aformer_mini efficientvit_m4"
  "vz_s2aformer_mini efficientvit_m5"
  "vz_s2aformer_t fastvit_t8"
  "vz_s2aformer_s mobilevitv2_100"
)
runs=()
for pair in "${PAIRS[@]}"; do
  read -r model baseline <<<"$pair"
  "$PYTHON" -m visionzoo bench "$model" --vs "$baseline" "${SETTINGS[@]}" --output-dir "$OUT/$model-vs-$baseline"
  runs+=("$OUT/$model-vs-$baseline/bench.json")
done
"$PYTHON" - "$RESULTS" "${runs[@]}" <<'PY'
import json
import sys
from pathlib import Path

from visionzoo.bench.report import load_results, validate_results

target, *runs = sys.argv[1:]
docs = [load_results(Path(run)) for run in runs]
merged = dict(docs[0], results=[record for doc in docs for record in doc["results"]])
for doc, run in zip(docs[1:], runs[1:]):
    if doc["settings"] != merged["settings"]:
        raise SystemExit(f"{run} was measured with other settings than {runs[0]}; rerun the script")
# The header shows the first run's peak; each row's efficiency is against the peak measured in its own run.
merged["command"] = "bash tools/s2aformer_speed.sh"
Path(target).write_text(json.dumps(validate_results(merged), indent=2) + "\n")
PY
"$PYTHON" -m visionzoo bench --render-readme "$RESULTS" --readme "$ROOT/docs/s2aformer.md" \
  --plot "$ROOT/docs/images/s2aformer_vs.png"
