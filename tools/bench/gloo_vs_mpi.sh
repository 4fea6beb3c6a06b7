#!/usr/bin/env bash
# Gloo against MPI on 2 ranks of this machine, side by side in one run (issue 26.5): the latency of
# one agreement (4 doubles) and of one gradient bucket (50858 floats), then the Fashion-MNIST
# trainer's samples/s (2 epochs, the last epoch's figure) under mpirun and under torchrun.
#   bazel build -c opt //tools:train //tools/bench:backend_latency && tools/bench/gloo_vs_mpi.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-bazel-bin}
export OMP_NUM_THREADS=1
[[ $(id -u) -eq 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS)
torchrun=(/usr/bin/python3 -m torch.distributed.run --nproc_per_node=2 --redirects 2 --tee 2 --master_port 29811 --no_python)
work=$(mktemp -d)
echo "== latency"
"${mpi[@]}" "$bin/tools/bench/backend_latency"
"${torchrun[@]}" "$bin/tools/bench/backend_latency" 2>&1 | grep -o '{"backend".*'
echo "== trainer, Fashion-MNIST, 2 epochs (last epoch's samples/s)"
sps() { grep -o '"epoch": 2, .*' | grep -o '"samples_per_s": [0-9.]*' | tail -n 1; }
echo "mpi:  $("${mpi[@]}" "$bin/tools/train" --epochs=2 --progress=none --output_dir="$work/mpi" 2>&1 | sps)"
echo "gloo: $("${torchrun[@]}" "$bin/tools/train" --epochs=2 --progress=none --output_dir="$work/gloo" 2>&1 | sps)"
rm -rf "$work"
