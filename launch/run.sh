#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and train the small default model on the
# built-in recall task (CPU backend when there is no GPU). Extra arguments go to `hsa train`,
# e.g. launch/run.sh --set train.steps=600
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
./build/launch/hsa info
./build/launch/hsa train "$@"
