#!/usr/bin/env bash
# Issue 15's GPU checks as one script for a lent GPU machine (CUDA, PyTorch 2.x with torchrun,
# CMake; no Bazel): build, then run each check, keep going after a failure, and write every log
# and a summary to OUT (default $OUT, else /tmp/ember-gpu):
#   tools/gpu/gpu_checks.sh [EPOCHS=3]
# With the device tool: run(command="tools/gpu/gpu_checks.sh", carry=["third_party/gpu_sources"])
# after tools/gpu/fetch_sources.sh here. The checks:
#   machine        nvidia-smi, torch's version and CUDA
#   build          tools/gpu/build.sh (Abseil, GoogleTest, Ember with LibTorch's ABI)
#   nccl_smoke     one NCCL all-reduce
#   conformance    the communicator conformance suite on NCCL (tests/gpu)
#   dp_device      DataParallel on CUDA tensors: buckets reduced on the device, nothing staged
#   rendezvous     NCCL's unique-id rendezvous under that PyTorch's torchrun, 2 ranks (its agent
#                  holds MASTER_PORT), and with --standalone
#   train_nccl     the trainer, --backend=nccl --device=cuda, world size 1, under torchrun --no-python
#   train_alone    the same without a communicator (--backend=single): the step without communication
#   ddp            PyTorch's DistributedDataParallel, NCCL, world size 1, same model, data and batch
#   torch_load     torch.load(weights_only=True) of the trainer's newest checkpoint
#   peer_missing   rank 0 of a world of 2 whose rank 1 never starts: must fail within its deadline
set -uo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-3}
out=${OUT:-/tmp/ember-gpu}
mkdir -p "$out"
data=third_party/gpu_sources/fashion-mnist
bin=build-gpu
summary=$out/summary.txt
: >"$summary"
check() {  # check NAME COMMAND...: runs it, logs it, records exit status and seconds
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$out/$name.log"
  "$@" >>"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
  tail -n 15 "$out/$name.log"
  return $rc
}
rate() { /usr/bin/env python3 -c 'import json, sys, statistics
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(l["samples_per_s"] for l in lines[1:] or lines))' "$1"; }

check machine bash -c 'nvidia-smi; python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \"abi\", torch._C._GLIBCXX_USE_CXX11_ABI)"; cmake --version | head -n 1; nproc'
check build tools/gpu/build.sh "$bin" || { echo "the build failed: nothing else can run" | tee -a "$summary"; exit 1; }
check nccl_smoke "$bin/nccl_smoke_test"
check conformance "$bin/nccl_communicator_test"
check dp_device "$bin/data_parallel_gpu_test"
check rendezvous bash -c "torchrun --nproc_per_node=2 --master_port=29541 --no-python $bin/torchrun_rendezvous &&
  torchrun --standalone --nproc_per_node=2 --no-python $bin/torchrun_rendezvous"
common=(--data="mnist:$data" --epochs="$epochs" --patience=100 --progress=lines --device=cuda)
rm -rf "$out/train_nccl" "$out/train_alone"
check train_nccl torchrun --no-python --nproc_per_node=1 "$bin/train" --backend=nccl "${common[@]}" --output_dir="$out/train_nccl"
check train_alone "$bin/train" --backend=single "${common[@]}" --output_dir="$out/train_alone"
check ddp torchrun --nproc_per_node=1 tools/gpu/ddp_baseline.py --data="$data" --epochs="$epochs" --device=cuda
check torch_load python3 -c 'import glob, sys, torch
f = sorted(glob.glob(sys.argv[1] + "/*.pt"))[-1]
sd = torch.load(f, weights_only=True)
print(f, "->", {k: type(v).__name__ for k, v in sd.items()})
print("model tensors:", {k: (tuple(v.shape), str(v.dtype), str(v.device)) for k, v in sd["model"].items()})' "$out/train_nccl"
check peer_missing timeout 300 env RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
  TORCHELASTIC_RUN_ID=ember-peer-missing "$bin/train" --backend=nccl "${common[@]}" --deadline_s=20 --init_timeout_s=20 --output_dir="$out/peer_missing"

{
  echo "--- figures"
  [[ -f $out/train_nccl/metrics.jsonl ]] && echo "Ember trainer, NCCL, world size 1: $(rate "$out/train_nccl/metrics.jsonl") samples/s (median of epochs 2..)"
  [[ -f $out/train_alone/metrics.jsonl ]] && echo "Ember trainer, no communicator: $(rate "$out/train_alone/metrics.jsonl") samples/s"
  grep -h '"baseline"' "$out/ddp.log" | python3 -c 'import json, sys, statistics
lines = [json.loads(l) for l in sys.stdin]
print("PyTorch DDP, NCCL, world size 1: %.1f samples/s (median of epochs 2..)" % statistics.median(l["samples_per_s"] for l in lines[1:] or lines))' 2>/dev/null
} | tee -a "$summary"
echo "logs and summary in $out"
