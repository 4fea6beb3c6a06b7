#!/usr/bin/env bash
# Trainer throughput on Fashion-MNIST (MLP 784-256-128-10, SGD lr 0.05 momentum 0.9, batch 64 per
# rank, one thread per rank) against a hand-written LibTorch loop, in the same run:
#   tools/bench/train_throughput.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bazel build -c opt //tools:train //tools/bench:handwritten_train >/dev/null 2>&1
tmp=$(mktemp -d)
rate() { sed -n 's/.*"samples_per_s": \([0-9.]*\).*/\1/p' "$1" | head -n 1; }
for i in 1 2; do
  bazel-bin/tools/bench/handwritten_train | tee -a "$tmp/base.txt"
  bazel-bin/tools/train --epochs=1 --output_dir="$tmp/one$i" --progress=none >/dev/null 2>&1
  mpirun --oversubscribe -np 2 bazel-bin/tools/train --epochs=1 --output_dir="$tmp/two$i" --progress=none >/dev/null 2>&1
  echo "trainer 1 rank: $(rate "$tmp/one$i/metrics.jsonl") samples/s; 2 ranks: $(rate "$tmp/two$i/metrics.jsonl") samples/s"
done
rm -rf "$tmp"
