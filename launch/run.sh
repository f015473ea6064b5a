#!/usr/bin/env bash
# The main job on a fresh machine: set up and build, then in runs/demo/: turn the training
# split of the installed prose corpus into a token shard, train a small model on a mixture
# of that text, the RULER passkey task and the built-in recall task at 256 tokens (CPU
# backend when there is no GPU; about 2.5 minutes on two cores), and score the last
# checkpoint on the recall task and on passkey at 1x, 4x and 16x the training length.
# Extra arguments go to `hsa train`, e.g.
#   bash launch/run.sh --set train.steps=2000
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
hsa=./build/launch/hsa
$hsa info
mkdir -p runs/demo/data
$hsa data corpus --split train --out runs/demo/data/corpus_train.txt
$hsa data tokenize --tokenizer byte --split-blank-lines --overwrite --out runs/demo/data/corpus \
  runs/demo/data/corpus_train.txt
$hsa train --config launch/configs/demo.json --overwrite "$@"
last=$(ls runs/demo/checkpoints/step-*.h5 | sort | tail -1)
echo "task accuracy of $last at 1x, 4x and 16x the training length (256 tokens):"
$hsa eval --ckpt "$last" --task recall --lengths 256,1K,4K --samples 16
$hsa eval --ckpt "$last" --task passkey --lengths 256,1K,4K --samples 8
