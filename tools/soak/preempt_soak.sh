#!/usr/bin/env bash
# Preemption soak (issue 14; not in CI, minutes per hundred trials):
#   tools/soak/preempt_soak.sh [TRIALS=200] [RANKS=2]
# Builds //tools:train and //tools:ckpt, trains an uninterrupted reference, then per trial: starts
# the same run, sends SIGTERM to every rank at a random moment (as Slurm and torchrun do), sends
# SIGKILL after a grace period drawn at random below and above the preemption bound, resumes
# until the run completes, and compares. Prints one line per trial and a summary: checkpoints
# lost or torn (goal 0), runs whose final state differs bitwise from the reference (goal 0),
# ledger violations (goal 0), saves later than their own bound (goal 0: each preemption line
# gives the step window the signal fell in and the save; the bound is their sum, so a loaded
# machine's slower steps move the bound with them), and the distribution of the signal-to-durable
# times the trainer reports. Needs mpirun; exits 1 when a goal is missed.
set -uo pipefail
trials=${1:-200}
ranks=${2:-2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo" && bazel build -c opt //tools:train //tools:ckpt >/dev/null 2>&1 || { echo "build failed"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d /tmp/ember-soak.XXXXXX)
# Copies, so that a build in this workspace during the soak cannot swap the binaries under it.
mkdir -p "$work/bin" && cp "$repo"/bazel-bin/tools/{train,ckpt} "$work/bin/" || { echo "copying the binaries failed"; exit 1; }
train=$work/bin/train
ckpt=$work/bin/ckpt
args=(--data=synthetic --epochs=3 --global_batch=96 --hidden=512,512 --patience=100 --ledger --progress=none)
mpi() { timeout 600 mpirun --oversubscribe -np "$ranks" --mca btl self,vader "$@"; }
state() { "$ckpt" show "$1"/checkpoint_3_*.pt 2>/dev/null | sed 's/"file": "[^"]*", //'; }

start=$(date +%s.%N)
mpi "$train" "${args[@]}" --output_dir="$work/ref" >"$work/ref.log" 2>&1 || { echo "reference run failed"; cat "$work/ref.log"; exit 1; }
run_s=$(echo "$(date +%s.%N) - $start" | bc)
reference=$(state "$work/ref")
# The bound: one step plus one save, from the reference's per-iteration time and a preemption save.
step_ms=$(tail -n 1 "$work/ref/metrics.jsonl" | sed -n 's/.*"time_per_iteration_s": \([0-9.e-]*\).*/\1/p' | awk '{print $1 * 1000}')
mpi "$train" "${args[@]}" --output_dir="$work/probe" --inject_preempt=0:50 >"$work/probe.log" 2>&1
save_ms=$(sed -n 's/.*, save \([0-9]*\) ms).*/\1/p' "$work/probe.log" | sort -n | tail -n 1)
bound_ms=$(awk -v a="$step_ms" -v b="${save_ms:-50}" 'BEGIN { printf "%d", a + b + 1 }')
echo "reference: ${run_s}s; step ${step_ms} ms; save ${save_ms} ms; bound ${bound_ms} ms; $trials trials on $ranks ranks in $work"

lost=0 differ=0 ledger_bad=0 over_bound=0 startup=0 durable_times=() ratios=()
for ((t = 1; t <= trials; ++t)); do
  d="$work/t$t"
  mpi "$train" "${args[@]}" --output_dir="$d" >"$d.log" 2>&1 &
  job=$!
  sleep "$(awk -v r=$RANDOM -v s="$run_s" 'BEGIN { printf "%.3f", 0.3 + r / 32768 * s * 0.9 }')"
  pids=$(pgrep -f -- "--output_dir=$d" | while read -r p; do [[ $(cat /proc/$p/comm 2>/dev/null) == train ]] && echo "$p"; done)
  [[ -n $pids ]] && kill -TERM $pids 2>/dev/null
  grace_ms=$(( RANDOM % (2 * bound_ms + 1) ))
  sleep "$(awk -v g=$grace_ms 'BEGIN { printf "%.3f", g / 1000 }')"
  pkill -9 -f -- "--output_dir=$d" 2>/dev/null
  wait "$job" 2>/dev/null
  times=$(sed -n 's/.*durable \([0-9]*\) ms after the signal.*/\1/p' "$d.log" | tr '\n' ' ')
  for x in $times; do durable_times+=("$x"); done
  # Each save against its own bound (window + save, 2 ms for the clock reads between them).
  late=$(sed -n 's/.*durable \([0-9]*\) ms after the signal (step window \([0-9]*\) ms, save \([0-9]*\) ms).*/\1 \2 \3/p' "$d.log" |
    awk '$1 > $2 + $3 + 2 { n++ } END { print n + 0 }')
  over_bound=$((over_bound + late))
  startup=$((startup + $(grep -c "signalled before training began" "$d.log")))
  ratios+=($(sed -n 's/.*durable \([0-9]*\) ms after the signal (step window \([0-9]*\) ms, save \([0-9]*\) ms).*/\1 \2 \3/p' "$d.log" |
    awk '{ printf "%.2f\n", $1 / ($2 + $3 + 2) }'))
  shopt -s nullglob
  files=("$d"/*.pt)
  torn=0
  [[ ${#files[@]} -gt 0 ]] && { "$ckpt" verify "${files[@]}" >/dev/null 2>&1 || torn=1; }
  # Resume until the run completes (a resume itself is never interrupted here).
  mpi "$train" "${args[@]}" --output_dir="$d" --resume >>"$d.log" 2>&1 || torn=1
  [[ $torn -eq 1 ]] && ((++lost))
  same=1
  [[ "$(state "$d")" == "$reference" ]] || { same=0; ((++differ)); }
  "$ckpt" ledger "$d" >/dev/null 2>&1 || ((++ledger_bad))
  echo "trial $t: grace ${grace_ms} ms; signal-to-durable: ${times:-none (killed first)}; over its bound: $late; torn/lost: $torn; same as reference: $same"
  [[ $same -eq 1 && $torn -eq 0 ]] && rm -rf "$d" "$d.log"
done
sorted=($(printf '%s\n' "${durable_times[@]}" | sort -n))
n=${#sorted[@]}
pct() { [[ $n -gt 0 ]] && echo "${sorted[$(( ($1 * (n - 1)) / 100 ))]}" || echo "-"; }
max_ratio=$(printf '%s\n' "${ratios[@]}" | sort -n | tail -n 1)
echo "SUMMARY: $trials trials on $ranks ranks; quiet bound ${bound_ms} ms; lost or torn: $lost; differ from the uninterrupted run: $differ;" \
     "ledger violations: $ledger_bad; saves over their own bound (step window + save): $over_bound of $((n - startup)) (largest ratio ${max_ratio:--});" \
     "signalled before training began (outside the bound): $startup;" \
     "signal-to-durable ms over $n saves: min $(pct 0) median $(pct 50) p95 $(pct 95) max $(pct 100)"
[[ $lost -eq 0 && $differ -eq 0 && $ledger_bad -eq 0 && $over_bound -eq 0 ]]
