#!/usr/bin/env bash
# Ember's GPU checks as ONE command for a lent GPU machine (CUDA, PyTorch 2.x, CMake; no Bazel, no
# network), shaped by that machine's rules: every step under its own `timeout`, the whole within
# EMBER_GPU_BUDGET_S seconds (default 460, under the 8 minutes a run may take here); only two files
# come back in $OUT: summary.txt (short) and logs.tar.gz (every log, metrics, no checkpoints).
#   tools/gpu/gpu_checks.sh [--dry-run] [EPOCHS=3]          (or DRY_RUN=1)
# With the device tool, after tools/gpu/fetch_sources.sh here:
#   run(command="tools/gpu/gpu_checks.sh", carry=["third_party/gpu_sources"], timeout_s=520)
# Each step ends PASS, FAIL (exit status, or "timed out after N s"), SKIPPED (a gtest skipped a
# test: its reason is shown; never counted as a pass) or NOT RUN (why: dry run, no build, no
# prebuilt binary, no time left). Steps that need no build come first, so a failed build stops
# only the steps that need it:
#   machine        nvidia-smi, torch and its CUDA, NCCL: no GPU, no CUDA torch or no NCCL is FAIL
#   smoke_prebuilt one NCCL all-reduce, the binary fetch_sources.sh built (torch-free)
#   rdzv_prebuilt  NCCL's unique-id rendezvous (torch-free binary) under torchrun, 2 ranks
#   load_carried   torch.load(weights_only=True) of the CPU checkpoint fetch_sources.sh wrote
#   ddp            PyTorch's DistributedDataParallel, NCCL, world size 1 (tools/gpu/ddp_baseline.py)
#   build          tools/gpu/build.sh (missing CUDA or NCCL is a configure error there)
#   conformance    the communicator conformance suite on NCCL (tests/gpu), gtest XML parsed
#   dp_device      DataParallel's buckets reduced on the device, gtest XML parsed
#   peer_missing   rank 0 of 2 whose peer never starts: must fail (non-zero) within its deadline
#   ddp_nccl_N, train_nccl_N (N = 1, 2, 3, interleaved) the side by side: PyTorch DDP and the trainer
#                  (--backend=nccl --device=cuda --reduce_alone, under torchrun), world size 1, the
#                  same MLP, batch and bucket size (EMBER_GPU_BUCKET_MIB, 16), both reducing every
#                  bucket through NCCL (DDP cuts its buckets differently: tools/gpu/ddp_baseline.py;
#                  each side's all-reduces per step are printed); a launch-bound step
#                  (784-256-128-10, batch 64); 2 epochs a run, the figure is the second
#   ddp_big, train_big  once each, a compute-bound step (784-4096-4096-10, batch 512)
#   train_alone    the trainer with --backend=single: the step without communication
#   load_gpu       torch.load(weights_only=True) of train_nccl_1's newest checkpoint
# The figures (summary lines 'figure:'): each side's samples/s over its runs, min / median / max,
# the ratio of the medians and ms per step (tools/bench/side_by_side.py), from the runs that passed.
# --dry-run (for this machine, without a GPU): runs what needs neither a GPU nor PyTorch 2.x (the
# prebuilt rendezvous, the load of the carried checkpoint with this machine's torch) and reports
# every other step NOT RUN with the reason; it fakes no result. Exit status: 0 when no step FAILed
# or was SKIPPED, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
dry=${DRY_RUN:-0}
epochs=3
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    [1-9]|[1-9][0-9]) epochs=$arg ;;
    *) echo "gpu_checks.sh: unknown argument '$arg'; allowed: --dry-run, EPOCHS (1..99)" >&2; exit 2 ;;
  esac
done
[[ $dry == 0 || $dry == 1 ]] || { echo "gpu_checks.sh: DRY_RUN='$dry'; allowed: 0 or 1" >&2; exit 2; }
budget=${EMBER_GPU_BUDGET_S:-460}
bucket=${EMBER_GPU_BUCKET_MIB:-16}
awk -v b="$bucket" 'BEGIN { exit !(b ~ /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ && b * 1048576 >= 1 && b <= 1024) }' ||
  { echo "gpu_checks.sh: EMBER_GPU_BUCKET_MIB='$bucket' is not a number of MiB in (0, 1024], at least one byte" >&2; exit 2; }
[[ $budget =~ ^[1-9][0-9]*$ ]] || { echo "gpu_checks.sh: EMBER_GPU_BUDGET_S='$budget' is not a positive integer" >&2; exit 2; }
out=${OUT:-/tmp/ember-gpu}
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/ember-gpu-work.XXXXXX")
logs=$work/logs
mkdir -p "$logs"
summary=$out/summary.txt
py=${PYTHON:-python3}
src=third_party/gpu_sources
prebuilt=$src/prebuilt
data=$src/fashion-mnist
bin=${EMBER_GPU_BUILD:-build-gpu}
start=$SECONDS
reserve=15  # seconds kept for the summary and the tarball
if command -v torchrun >/dev/null 2>&1; then torchrun=(torchrun); else torchrun=("$py" -m torch.distributed.run); fi
# PyTorch's NCCL and CUDA runtime libraries, for the prebuilt torch-free binaries.
wheel_libs=$("$py" - 2>/dev/null <<'PY'
import glob, os
dirs = []
for mod in ("nvidia.nccl", "nvidia.cuda_runtime", "nvidia.cu13", "nvidia"):
    try:
        m = __import__(mod, fromlist=["_"])
        for p in getattr(m, "__path__", []):
            dirs += [d for d in glob.glob(os.path.join(p, "**", "lib"), recursive=True) if os.path.isdir(d)]
    except Exception:
        pass
print(":".join(sorted(set(dirs))))
PY
)
export LD_LIBRARY_PATH=${wheel_libs:+$wheel_libs:}${LD_LIBRARY_PATH:-}

: >"$summary"
{
  echo "Ember GPU checks $(date -u +%FT%TZ)$([[ $dry == 1 ]] && echo ' DRY RUN (no GPU step runs)')"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); budget ${budget} s; torchrun: ${torchrun[*]}"
} >>"$summary"
failures=0
record() {  # record NAME RESULT SECONDS DETAIL
  printf '%-15s %-8s %4s s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$summary"
  [[ $2 == FAIL || $2 == SKIPPED ]] && failures=$((failures + 1))
  return 0
}
not_run() { record "$1" "NOT RUN" 0 "$2"; }

# gtest's XML: "SKIPPED (reasons)" when a test skipped, else empty.
gtest_skips() {
  [[ -f $1 ]] || { echo "no gtest XML written"; return; }
  "$py" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
skips = []
for case in root.iter("testcase"):
    s = case.find("skipped")
    if s is not None or case.get("result") == "skipped":
        skips.append("%s: %s" % (case.get("name"), (s.get("message") if s is not None else "") or "skipped"))
if skips:
    print("; ".join(m.replace("\n", " ")[:160] for m in skips))
PY
}

# step NAME TIMEOUT_S [--gtest] COMMAND...: runs COMMAND under `timeout`, capped by what is left
# of the budget; its output goes to logs/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local gtest=0
  if [[ ${1:-} == --gtest ]]; then gtest=1; shift; fi
  local left=$((budget - (SECONDS - start) - reserve))
  if ((left < 5)); then not_run "$name" "no time left of the ${budget} s budget"; return 1; fi
  ((limit > left)) && limit=$left
  local log=$logs/$name.log t0=$SECONDS
  local cmd=("$@")
  ((gtest)) && cmd+=("--gtest_output=xml:$logs/$name.xml")
  echo "== $name (timeout ${limit} s): ${cmd[*]}" >"$log"
  timeout -k 5 "$limit" "${cmd[@]}" >>"$log" 2>&1 </dev/null
  local rc=$? took=$((SECONDS - t0))
  echo "== exit $rc after $took s" >>"$log"
  if ((rc == 124 || rc == 137)); then
    record "$name" FAIL "$took" "timed out after ${limit} s; $(tail -n 1 "$log" | cut -c1-100)"
    return 1
  elif ((rc != 0)); then
    record "$name" FAIL "$took" "exit $rc: $(grep -v '^==' "$log" | tail -n 1 | cut -c1-120)"
    return 1
  fi
  if ((gtest)); then
    local skips
    skips=$(gtest_skips "$logs/$name.xml")
    if [[ -n $skips ]]; then record "$name" SKIPPED "$took" "$skips"; return 1; fi
  fi
  record "$name" PASS "$took" "$(grep -v '^==' "$log" | tail -n 1 | cut -c1-120)"
  return 0
}
gpu_step() {  # as step, or NOT RUN in a dry run
  if [[ $dry == 1 ]]; then not_run "$1" "dry run: needs the GPU machine"; return 1; fi
  step "$@"
}

# ---- steps that need no build ------------------------------------------------------------------
gpu_step machine 30 "$py" tools/gpu/machine_check.py
if [[ -x $prebuilt/nccl_smoke_test ]]; then
  gpu_step smoke_prebuilt 60 --gtest "$prebuilt/nccl_smoke_test"
else
  not_run smoke_prebuilt "no $prebuilt/nccl_smoke_test: run tools/gpu/fetch_sources.sh and carry $src"
fi
if [[ ! -x $prebuilt/torchrun_rendezvous ]]; then
  not_run rdzv_prebuilt "no $prebuilt/torchrun_rendezvous: run tools/gpu/fetch_sources.sh and carry $src"
elif ! "$py" -c 'import torch.distributed.run' >/dev/null 2>&1; then
  not_run rdzv_prebuilt "no torchrun: $py has no torch.distributed.run"
else
  # --redirects/--tee: torchrun 1.13 under Python 3.11 (the dry run here) breaks without them.
  step rdzv_prebuilt 60 "${torchrun[@]}" --nproc_per_node=2 --master_port=29541 --redirects 1 --tee 1 \
    --log_dir "$work/torchrun_rdzv" --no_python "$prebuilt/torchrun_rendezvous"
fi
if [[ ! -d $src/cpu_checkpoint ]]; then
  not_run load_carried "no $src/cpu_checkpoint: run tools/gpu/fetch_sources.sh and carry $src"
elif ! "$py" -c 'import torch' >/dev/null 2>&1; then
  not_run load_carried "$py has no torch"
else
  step load_carried 60 "$py" tools/gpu/load_check.py "$src/cpu_checkpoint"
fi
if [[ -d $data ]]; then
  gpu_step ddp 90 "${torchrun[@]}" --nproc_per_node=1 --master_port=29542 tools/gpu/ddp_baseline.py --data="$data" --epochs="$epochs" --device=cuda --bucket_cap_mb="$bucket"
else
  not_run ddp "no $data: run tools/gpu/fetch_sources.sh and carry $src"
fi

# ---- the build and what needs it ---------------------------------------------------------------
built=0
if [[ $dry == 1 ]]; then
  not_run build "dry run: builds against the GPU machine's PyTorch 2.x (here, tools/libtorch2_check.sh checks the sources against LibTorch 2.6)"
elif step build 240 tools/gpu/build.sh "$bin"; then
  built=1
fi
need_build() {  # need_build NAME ...: the step, or NOT RUN without a build
  if [[ $dry == 1 ]]; then not_run "$1" "dry run: needs the GPU machine"; return 1; fi
  if ((!built)); then not_run "$1" "the build failed or did not run"; return 1; fi
  step "$@"
}
need_build conformance 90 --gtest "$bin/nccl_communicator_test"
need_build dp_device 90 --gtest "$bin/data_parallel_gpu_test"
# Must fail: a world of 2 whose rank 1 never starts ends at its deadline with a non-zero exit.
need_build peer_missing 60 bash -c "env RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
  MASTER_PORT=29533 TORCHELASTIC_RUN_ID=ember-peer-missing $bin/train --backend=nccl --data=mnist:$data --epochs=1 \
  --device=cuda --deadline_s=20 --init_timeout_s=20 --output_dir=$work/peer_missing; rc=\$?;
  if [[ \$rc -eq 0 ]]; then echo 'rank 0 of 2 succeeded without its peer'; exit 1; fi; echo \"failed as it must (exit \$rc)\""
# The side by side: both sides reduce every bucket through NCCL at world size 1 (DDP's Reducer
# always does; the trainer with --reduce_alone), the same bucket size, interleaved runs.
common=(--data="mnist:$data" --epochs="$epochs" --patience=100 --progress=lines --device=cuda)
sbs_epochs=2  # a run's figure is its second epoch; 8 runs must fit the budget
ddp_runs=() ember_runs=()
side_by_side() {  # side_by_side SUFFIX PORT [--hidden=H --batch_size=B]: one DDP run, then one trainer run
  local suffix=$1 port=$2
  shift 2
  if [[ -d $data ]]; then
    gpu_step "ddp_$suffix" 90 "${torchrun[@]}" --nproc_per_node=1 --master_port="$port" tools/gpu/ddp_baseline.py \
      --data="$data" --epochs="$sbs_epochs" --device=cuda --bucket_cap_mb="$bucket" "$@" && ddp_runs+=("$suffix")
  else
    not_run "ddp_$suffix" "no $data: run tools/gpu/fetch_sources.sh and carry $src"
  fi
  need_build "train_$suffix" 120 "${torchrun[@]}" --nproc_per_node=1 --master_port="$((port + 1))" --no_python \
    "$bin/train" --backend=nccl --reduce_alone --bucket_mib="$bucket" "${common[@]}" --epochs="$sbs_epochs" "$@" \
    --output_dir="$work/train_$suffix" && ember_runs+=("$suffix")
}
for r in 1 2 3; do side_by_side "nccl_$r" $((29543 + 2 * r)); done
side_by_side big 29553 --hidden=4096,4096 --batch_size=512
need_build train_alone 90 "$bin/train" --backend=single "${common[@]}" --output_dir="$work/train_alone"
if [[ $dry == 1 ]]; then
  not_run load_gpu "dry run: loads train_nccl_1's checkpoint, written on the GPU machine"
elif [[ -d $work/train_nccl_1 ]]; then
  step load_gpu 60 "$py" tools/gpu/load_check.py "$work/train_nccl_1"
else
  not_run load_gpu "train_nccl_1 wrote no checkpoint folder"
fi

# ---- figures, logs -------------------------------------------------------------------------------
rate() {
  "$py" -c 'import json, sys, statistics
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
r = [l["samples_per_s"] for l in lines if "samples_per_s" in l]
print("%.0f samples/s (median of %d epochs after the first)" % (statistics.median(r[1:] or r), len(r[1:] or r)))' "$1" 2>/dev/null
}
compare() {  # compare TITLE GLOBAL_BATCH SUFFIX...: the side by side of the runs that passed
  local title=$1 batch=$2 e=() d=() x
  shift 2
  for x in "$@"; do
    [[ " ${ember_runs[*]} " == *" $x "* ]] && e+=("$work/train_$x/metrics.jsonl")
    [[ " ${ddp_runs[*]} " == *" $x "* ]] && d+=("$logs/ddp_$x.log")
  done
  ((${#e[@]} && ${#d[@]})) || return 0
  local IFS=,
  echo "figure: $title (bucket $bucket MiB; ${#e[@]} trainer and ${#d[@]} DDP run(s) passed):"
  "$py" tools/bench/side_by_side.py --global_batch="$batch" "ember:${e[*]}" "ddp:${d[*]}" 2>&1 | sed 's/^/figure:   /'
}
{
  compare "world size 1, NCCL, launch-bound MLP 784-256-128-10, batch 64, interleaved" 64 nccl_1 nccl_2 nccl_3
  compare "world size 1, NCCL, compute-bound MLP 784-4096-4096-10, batch 512, one run each" 512 big
  [[ -f $work/train_alone/metrics.jsonl ]] && echo "figure: Ember trainer, no communicator: $(rate "$work/train_alone/metrics.jsonl")"
  if [[ -f $logs/ddp.log ]]; then
    grep -h '"baseline"' "$logs/ddp.log" >"$work/ddp.jsonl" 2>/dev/null && echo "figure: PyTorch DDP before the build: $(rate "$work/ddp.jsonl")"
  fi
} | tee -a "$summary"
for d in train_nccl_1 train_nccl_2 train_nccl_3 train_big train_alone peer_missing; do
  [[ -f $work/$d/metrics.jsonl ]] && cp "$work/$d/metrics.jsonl" "$logs/$d.metrics.jsonl"
done
[[ -f $bin/CMakeCache.txt ]] && grep -E '^(TORCH_HOME|NCCL_|CUDA|JSON_INCLUDE|EMBER_)' "$bin/CMakeCache.txt" >"$logs/build.cmakecache.txt"
echo "total $((SECONDS - start)) s; $failures step(s) FAILED or SKIPPED; logs in logs.tar.gz" | tee -a "$summary"
tar -czf "$out/logs.tar.gz" -C "$work" logs
rm -rf "$work"
((failures == 0))
