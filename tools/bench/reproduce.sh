#!/usr/bin/env bash
# Reproduces every figure of docs/performance.md, each as the minimum / median /
# maximum of RUNS runs, on this machine:
#   tools/bench/reproduce.sh [--checkpoint_io] [RUNS=3] [OUT_DIR]
# (--checkpoint_io: step 7 alone, the checkpoint I/O growth table of the README; about 15 minutes
# with RUNS=3)
# Builds the benchmarks (-c opt), then runs, in this order (about 25 minutes with RUNS=3 on a
# 2-core VM; run it on a quiet machine, since every figure is a time):
#   1. engine_benchmark                       the engine's cost per iteration, allocations
#   2. serialization_benchmark                torch.save/load and DiskSaver against raw I/O, what an
#                                             asynchronous save blocks, the background snapshot
#   3. consensus_benchmark, 2 and 4 ranks     one synchronized firing against bare MPI collectives
#   4. data_parallel_benchmark, 2 ranks       step time with and without overlap, collectives/step
#   5. handwritten_train, train 1 and 2 ranks the trainer's samples/s against a hand-written loop
#   6. checkpoint_goodput.sh                  what checkpointing costs the trainer
#   7. checkpoint_io_benchmark                checkpoint save/verify/load against raw I/O at 64 MiB,
#                                             512 MiB and 2 GiB (RUNS runs each, interleaved with the
#                                             raw baseline), a save's peak extra memory, and listing /
#                                             a fresh run's first save with 1 and 5 kept checkpoints
#                                             (needs about 5 GiB free in /tmp); then
#                                             checkpoint_io_python.py: Python's torch.save /
#                                             torch.load of the same states, beside the same raw
#                                             baselines (Debian's /usr/bin/python3 and its torch)
#                                             and resume_benchmark, 2 ranks, 64 MiB to 2 GiB: a
#                                             resume end to end against a raw read (+ broadcast)
# The raw outputs go to OUT_DIR (default: a new /tmp/ember-bench.XXXXXX) and the tables, with
# the machine and the commit, to OUT_DIR/report.md, which is printed at the end. The figures
# of docs/performance.md are copied from that report. Needs the Fashion-MNIST package for 5 and 6
# (tools/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
only_io=0
positional=()
for a in "$@"; do
  case $a in
    --checkpoint_io) only_io=1 ;;
    -*) echo "unknown flag '$a' (allowed: --checkpoint_io)" >&2; exit 2 ;;
    *) positional+=("$a") ;;
  esac
done
[[ ${#positional[@]} -le 2 ]] || { echo "usage: $0 [--checkpoint_io] [RUNS] [OUT_DIR]" >&2; exit 2; }
runs=${positional[0]:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer, got '$runs'" >&2; exit 2; }
out=${positional[1]:-$(mktemp -d /tmp/ember-bench.XXXXXX)}
mkdir -p "$out"
# The report reads every record in OUT_DIR: an earlier run's files would mix into it.
if [[ -n $(ls -A "$out") ]]; then echo "OUT_DIR '$out' is not empty: give a new or empty folder" >&2; exit 2; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --mca btl self,vader)
log() { echo "[$(date +%T)] $*" >&2; }

log "building the benchmarks (-c opt)"
targets=(//tools/bench:checkpoint_io_benchmark //tools/bench:resume_benchmark)
if [[ $only_io -eq 0 ]]; then
  targets+=(//tools/bench:engine_benchmark //tools/bench:serialization_benchmark //tools/bench:consensus_benchmark
    //tools/bench:data_parallel_benchmark //tools/bench:handwritten_train //tools:train)
fi
bazel build -c opt "${targets[@]}" >"$out/build.log" 2>&1 || { tail -n 30 "$out/build.log"; exit 1; }
bin=bazel-bin/tools/bench
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "runs: $runs"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

if [[ $only_io -eq 0 ]]; then
for ((r = 1; r <= runs; ++r)); do
  log "1/7 engine_benchmark, run $r of $runs"
  "$bin/engine_benchmark" --benchmark_format=json >"$out/engine-$r.json" 2>"$out/engine-$r.log"
done
for ((r = 1; r <= runs; ++r)); do
  log "2/7 serialization_benchmark, run $r of $runs"
  "$bin/serialization_benchmark" --benchmark_format=json >"$out/serialization-$r.json" 2>"$out/serialization-$r.log"
done
for np in 2 4; do
  for ((r = 1; r <= runs; ++r)); do
    log "3/7 consensus_benchmark, $np ranks, run $r of $runs"
    "${mpi[@]}" -np "$np" "$bin/consensus_benchmark" >"$out/consensus-$np-$r.jsonl" 2>"$out/consensus-$np-$r.log"
  done
done
log "4/7 data_parallel_benchmark, 2 ranks, $runs repetitions"
"${mpi[@]}" -np 2 "$bin/data_parallel_benchmark" --repetitions="$runs" >"$out/data_parallel.jsonl" 2>"$out/data_parallel.log"
rate() { sed -n 's/.*"samples_per_s": \([0-9.]*\).*/\1/p' "$1" | head -n 1; }
for ((r = 1; r <= runs; ++r)); do
  # Interleaved, so that a drift of the machine's speed hits all three alike.
  log "5/7 trainer throughput, run $r of $runs"
  "$bin/handwritten_train" >"$out/handwritten-$r.json" 2>"$out/handwritten-$r.log"
  d=$(mktemp -d /tmp/ember-bench-train.XXXXXX)
  bazel-bin/tools/train --epochs=1 --output_dir="$d/one" --progress=none >"$out/train1-$r.log" 2>&1
  "${mpi[@]}" -np 2 bazel-bin/tools/train --epochs=1 --output_dir="$d/two" --progress=none >"$out/train2-$r.log" 2>&1
  echo "{\"one_rank\": $(rate "$d/one/metrics.jsonl"), \"two_ranks\": $(rate "$d/two/metrics.jsonl")}" >"$out/train-$r.json"
  rm -rf "$d"
done
log "6/7 checkpoint_goodput.sh $runs"
tools/bench/checkpoint_goodput.sh "$runs" >"$out/goodput.txt" 2>&1
fi
log "7/7 checkpoint_io_benchmark, $runs runs per size"
"$bin/checkpoint_io_benchmark" --runs="$runs" >"$out/checkpoint_io.jsonl" 2>"$out/checkpoint_io.log"
log "7/7 checkpoint_io_python.py (torch.save / torch.load of the same states), $runs runs per size"
/usr/bin/python3 tools/bench/checkpoint_io_python.py --runs="$runs" --sizes_mib=64,512,2048 \
  >>"$out/checkpoint_io.jsonl" 2>>"$out/checkpoint_io.log"
log "7/7 resume_benchmark, 2 ranks, 64 MiB to 2 GiB, $runs runs (read + verify, broadcast, load on each rank)"
"${mpi[@]}" -np 2 "$bin/resume_benchmark" --runs="$runs" --sizes_mib=64,512,2048 \
  >>"$out/checkpoint_io.jsonl" 2>>"$out/checkpoint_io.log"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

/usr/bin/python3 tools/bench/report.py "$out" >"$out/report.md"
{ echo; echo '### Raw checkpoint I/O records (checkpoint_io_benchmark, checkpoint_io_python.py, resume_benchmark; seconds per run)'; echo; echo '```'; cat "$out/checkpoint_io.jsonl"; echo '```'; } >>"$out/report.md"
cat "$out/report.md"
log "raw outputs and report.md in $out"
