#!/usr/bin/env bash
# What checkpointing costs the trainer (issue 13.2-13.4), on Fashion-MNIST, one rank, one thread,
# a checkpoint at the end of every epoch, synchronous saves against --async_save (the copy and
# the write on a background thread, the step waiting at the fence before optimizer.step()):
#   tools/bench/checkpoint_goodput.sh [RUNS=3] [HIDDEN...]     (default hidden sizes: 256,128; each
#   run of 1024,1024 takes about 4 minutes here)
# For each model and mode, over RUNS runs of 3 epochs, prints min / median / max of
#   blocked_ms    the training thread's time in the checkpointer per save (metrics.jsonl's
#                 checkpoint_blocked_s of epochs 1-3: the firing, and with --async_save the wait
#                 at the fence),
#   samples_per_s of epochs 2-3, whose training runs while the previous epoch's file is written in
#                 the background with --async_save (the save itself comes after the epoch's
#                 training time, so a synchronous run's epochs 2-3 train with no save at all),
# and the ratio of the async medians to the synchronous ones. Needs the Fashion-MNIST package
# (tools/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
shift || true
models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(256,128)
bazel build -c opt //tools:train >/dev/null 2>&1 || { echo "build failed"; exit 1; }
tmp=$(mktemp -d /tmp/ember-goodput.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r); $runs runs each"
for hidden in "${models[@]}"; do
  # Interleaved (sync, async, sync, ...), so that a drift of the machine's speed hits both alike.
  for ((r = 1; r <= runs; ++r)); do
    for mode in sync async; do
      flags=(--epochs=3 --hidden="$hidden" --patience=100 --progress=none --threads=1)
      [[ $mode == async ]] && flags+=(--async_save)
      d="$tmp/$hidden-$mode-$r"
      bazel-bin/tools/train "${flags[@]}" --output_dir="$d" >"$d.log" 2>&1 || { cat "$d.log"; exit 1; }
      cat "$d/metrics.jsonl" >>"$tmp/$hidden-$mode.jsonl"
    done
  done
  /usr/bin/python3 - "$tmp/$hidden-sync.jsonl" "$tmp/$hidden-async.jsonl" "$hidden" <<'PY'
import json, statistics, sys
def load(path):
    lines = [json.loads(l) for l in open(path)]
    blocked = [1000 * l["checkpoint_blocked_s"] for l in lines]
    rate = [l["samples_per_s"] for l in lines if l["epoch"] >= 2]
    return blocked, rate
def mmm(xs, fmt):
    return " / ".join(fmt % v for v in (min(xs), statistics.median(xs), max(xs)))
sync_b, sync_r = load(sys.argv[1])
async_b, async_r = load(sys.argv[2])
print(f"MLP 784-{sys.argv[3].replace(',', '-')}-10")
print(f"  sync : blocked per save {mmm(sync_b, '%.2f')} ms; samples/s (epochs 2-3) {mmm(sync_r, '%.0f')}")
print(f"  async: blocked per save {mmm(async_b, '%.2f')} ms; samples/s (epochs 2-3) {mmm(async_r, '%.0f')}")
print(f"  async / sync (medians): blocked {statistics.median(async_b) / statistics.median(sync_b):.3f}, "
      f"samples/s {statistics.median(async_r) / statistics.median(sync_r):.3f}")
PY
done
