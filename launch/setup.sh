#!/usr/bin/env bash
# Set-up on a fresh machine: installs the system packages hsa needs (when missing) and
# builds it into build/. Called by launch/run.sh and launch/test.sh; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ libgtest-dev libopenmpi-dev openmpi-bin libhdf5-dev libicu-dev gnuplot-nox bible-kjv-text fortunes-min fortunes wamerican)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
