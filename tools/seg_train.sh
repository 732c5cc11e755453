#!/usr/bin/env bash
# Train a seg config: tools/seg_train.sh CONFIG [NPROC] [--resume [PATH]] [--amp] [--work-dir DIR] [--cfg-options K=V ...]
exec "$(dirname "$0")/_mm_launch.sh" train "$@"
