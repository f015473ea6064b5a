#!/usr/bin/env bash
# The tests on a fresh machine: set up, build, and run every GoogleTest suite through ctest.
# GPU tests skip with a visible reason where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
cd build
ctest --output-on-failure --timeout 1200 -j"$(nproc 2>/dev/null || echo 2)"
