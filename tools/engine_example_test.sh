#!/usr/bin/env bash
# The example trains to a high accuracy, and rejects bad flags with a clear message.
set -euo pipefail
bin=$1
out=$("$bin" --epochs=3 --samples=2048)
echo "$out"
last=$(tail -n 1 <<<"$out")
acc=$(sed -n 's/.*"val_accuracy": \([0-9.]*\).*/\1/p' <<<"$last")
[[ -n $acc ]] || { echo "no final JSON line"; exit 1; }
awk -v a="$acc" 'BEGIN { exit !(a > 0.9) }' || { echo "val_accuracy $acc <= 0.9"; exit 1; }
grep -q '"epoch": 3, "iteration": 96' <<<"$last" || { echo "unexpected final counters"; exit 1; }
if err=$("$bin" --epochs=0 2>&1); then echo "--epochs=0 was accepted"; exit 1; fi
grep -q -- "--epochs must be >= 1, got 0" <<<"$err" || { echo "unclear error: $err"; exit 1; }
echo OK
