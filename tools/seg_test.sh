#!/usr/bin/env bash
# Evaluate a seg checkpoint: tools/seg_test.sh CONFIG CHECKPOINT [NPROC] [--work-dir DIR] [--cfg-options K=V ...]
exec "$(dirname "$0")/_mm_launch.sh" test "$@"
