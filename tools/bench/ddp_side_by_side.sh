#!/usr/bin/env bash
# Ember's trainer and PyTorch's DistributedDataParallel side by side (issue 25, item 10): the same
# model, data, batch and gradient bucket size, both under torchrun, both reducing at every world
# size (the trainer with --reduce_alone, as DDP's Reducer runs alone too), RUNS runs each,
# interleaved (ddp, ember, ddp, ember, ...), then min / median / max of each side and the ratio.
#   tools/bench/ddp_side_by_side.sh [--device=cpu|cuda] [--ranks=N] [--runs=R] [--epochs=E]
#       [--hidden=H] [--batch_size=B] [--bucket_mib=M] [--data=DIR] [--train=PATH] [OUT_DIR]
# Defaults: cpu (Gloo on both sides; cuda: NCCL), 1 rank, 3 runs, 2 epochs (a run's figure is its
# epochs after the first), --hidden=256,128 and --batch_size=64 (the trainer's MLP: a step of a
# few ms, launch-bound on a GPU; --hidden=4096,4096 --batch_size=512 is compute-bound), 16 MiB,
# Debian's Fashion-MNIST. --train defaults to bazel-bin/tools/train, built -c opt here. PYTHON
# (default: python3, else /usr/bin/python3) must have torch. Each side's samples/s is rank 0's
# training time per epoch (no evaluation). Run it on a quiet machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
device=cpu ranks=1 runs=3 epochs=2 hidden=256,128 batch=64 bucket=16 data=/usr/share/datasets/fashion-mnist train=""
out=""
for a in "$@"; do
  case $a in
    --device=*) device=${a#*=} ;;
    --ranks=*) ranks=${a#*=} ;;
    --runs=*) runs=${a#*=} ;;
    --epochs=*) epochs=${a#*=} ;;
    --hidden=*) hidden=${a#*=} ;;
    --batch_size=*) batch=${a#*=} ;;
    --bucket_mib=*) bucket=${a#*=} ;;
    --data=*) data=${a#*=} ;;
    --train=*) train=${a#*=} ;;
    -*) echo "ddp_side_by_side.sh: unknown flag '$a'; allowed: --device --ranks --runs --epochs --hidden --batch_size --bucket_mib --data --train" >&2; exit 2 ;;
    *) [[ -z $out ]] || { echo "ddp_side_by_side.sh: one OUT_DIR, got '$out' and '$a'" >&2; exit 2; }; out=$a ;;
  esac
done
[[ $device == cpu || $device == cuda ]] || { echo "ddp_side_by_side.sh: --device='$device'; allowed: cpu, cuda" >&2; exit 2; }
for v in ranks runs epochs batch; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "ddp_side_by_side.sh: --${v/batch/batch_size}='${!v}' must be a positive integer" >&2; exit 2; }
done
awk -v b="$bucket" 'BEGIN { exit !(b ~ /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ && b * 1048576 >= 1 && b <= 1024) }' ||
  { echo "ddp_side_by_side.sh: --bucket_mib='$bucket' must be a number of MiB in (0, 1024], at least one byte" >&2; exit 2; }
# Paths as the user gave them (relative to where the script was started), then the repository.
data=$(realpath -m -- "$data")
[[ -z $train ]] || train=$(realpath -m -- "$train")
[[ -z $out ]] || out=$(realpath -m -- "$out")
cd "$repo"
[[ -f $data/train-images-idx3-ubyte.gz || -f $data/train-images-idx3-ubyte ]] ||
  { echo "ddp_side_by_side.sh: --data='$data' has no Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz])" >&2; exit 2; }
py=${PYTHON:-python3}
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  if [[ -z ${PYTHON:-} ]] && /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then py=/usr/bin/python3; else
    echo "ddp_side_by_side.sh: $py has no torch (set PYTHON)" >&2; exit 2
  fi
fi
if [[ -z $train ]]; then
  echo "[$(date +%T)] building //tools:train (-c opt)" >&2
  bazel build -c opt //tools:train >/dev/null 2>&1 || { bazel build -c opt //tools:train 2>&1 | tail -n 20; exit 1; }
  train=$PWD/bazel-bin/tools/train
fi
[[ -x $train ]] || { echo "ddp_side_by_side.sh: --train='$train' is not an executable" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/ember-ddp.XXXXXX)}
mkdir -p "$out"
[[ -z $(ls -A "$out") ]] || { echo "ddp_side_by_side.sh: OUT_DIR '$out' is not empty: give a new or empty folder" >&2; exit 2; }
backend=$([[ $device == cuda ]] && echo nccl || echo gloo)
# --redirects/--tee/--log_dir: torchrun 1.13 under Python 3.11 breaks without them.
torchrun=("$py" -m torch.distributed.run --nproc_per_node="$ranks" --redirects 2 --tee 2)
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); torch $("$py" -c 'import torch; print(torch.__version__)')"
  echo "cpu: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "device $device ($backend), $ranks rank(s), --hidden=$hidden, --batch_size=$batch per rank, bucket $bucket MiB, $epochs epoch(s), $runs run(s) each, interleaved"
} | tee "$out/machine.txt" >&2
port=$((29600 + RANDOM % 300))
ember=() ddp=()
for ((r = 1; r <= runs; ++r)); do
  port=$((port + 2))
  echo "[$(date +%T)] run $r of $runs: PyTorch DDP" >&2
  if ! "${torchrun[@]}" --master_port="$port" --log_dir "$out/ddp-$r.torchrun" tools/gpu/ddp_baseline.py --data="$data" \
      --epochs="$epochs" --device="$device" --hidden="$hidden" --batch_size="$batch" --bucket_cap_mb="$bucket" \
      >"$out/ddp-$r.log" 2>&1; then
    tail -n 20 "$out/ddp-$r.log" >&2; echo "ddp_side_by_side.sh: the DDP run $r failed (log: $out/ddp-$r.log)" >&2; exit 1
  fi
  ddp+=("$out/ddp-$r.log")
  echo "[$(date +%T)] run $r of $runs: Ember" >&2
  if ! "${torchrun[@]}" --master_port="$((port + 1))" --log_dir "$out/ember-$r.torchrun" --no_python "$train" \
      --backend="$backend" --reduce_alone --bucket_mib="$bucket" --device="$device" --data="mnist:$data" \
      --epochs="$epochs" --hidden="$hidden" --batch_size="$batch" --patience=100 --progress=none \
      --output_dir="$out/ember-$r" >"$out/ember-$r.log" 2>&1; then
    tail -n 20 "$out/ember-$r.log" >&2; echo "ddp_side_by_side.sh: the Ember run $r failed (log: $out/ember-$r.log)" >&2; exit 1
  fi
  ember+=("$out/ember-$r/metrics.jsonl")
done
join() { local IFS=,; echo "$*"; }
"$py" tools/bench/side_by_side.py --global_batch=$((batch * ranks)) "ember:$(join "${ember[@]}")" "ddp:$(join "${ddp[@]}")" | tee "$out/report.txt"
echo "(outputs in $out)" >&2
