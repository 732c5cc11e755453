#!/usr/bin/env bash
# Evaluate a det checkpoint: tools/det_test.sh CONFIG CHECKPOINT [NPROC] [--work-dir DIR] [--cfg-options K=V ...]
exec "$(dirname "$0")/_mm_launch.sh" test "$@"
