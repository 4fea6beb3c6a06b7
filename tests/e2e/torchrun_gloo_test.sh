#!/usr/bin/env bash
# The trainer under a real torchrun (Debian's PyTorch 1.13) on 2 CPU ranks, on Gloo (issue 26.3):
#  - --backend=auto picks Gloo; every rank ends with the same decisions (final lines equal but
#    for the rank);
#  - two runs of the same seed (auto, and --backend=gloo) end bitwise equal (the checkpoints'
#    tensors and trainer state, as `ckpt show` prints them);
#  - a run stopped after epoch 2 and resumed to epoch 4 ends bitwise equal to the straight run;
#  - a preemption signal to one rank mid-epoch is agreed (every rank stops at that iteration and
#    saves), and the resumed run ends bitwise equal to the straight run;
#  - 4 ranks end with the same decisions on every rank;
#  - the MPI run of the same seed (mpirun -np 2) reaches the same validation accuracy within
#    float tolerance (the reductions sum in another order).
set -uo pipefail
train=$1
ckpt=$2
source "$(dirname "$0")/lib.sh"
py=/usr/bin/python3
"$py" -c "import torch.distributed.run" 2>/dev/null || fail "python3-torch is not installed (tools/setup.sh installs it)"
export OMP_NUM_THREADS=1
work=${TEST_TMPDIR:-$(mktemp -d)}
port=$((27000 + ($$ % 3000) * 2))
common=(--data=synthetic --patience=100 --seed=7 --progress=none --n_saved=1)

torchrun() {  # torchrun NAME [train args...]
  local name=$1
  shift
  timeout 300 "$py" -m torch.distributed.run --nproc_per_node=2 --redirects 2 --tee 2 --master_port "$port" \
    --log_dir "$work/logs-$name" --no_python "$train" "$@" 2>&1
}
finals() { grep -E '^\{"rank"' <<<"$1"; }
field() { "$py" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
st() { "$ckpt" show "$1"/checkpoint_4_*.pt | sed 's/"file": "[^"]*", //'; }
same_on_every_rank() {  # OUT NAME: two final lines, equal but for the rank
  local f
  f=$(finals "$1")
  [[ $(wc -l <<<"$f") -eq 2 ]] || fail "$2: want 2 final lines: $f"
  [[ $(sed 's/"rank": [0-9]*, //' <<<"$f" | sort -u | wc -l) -eq 1 ]] || fail "$2: the ranks decided differently: $f"
  grep -q '"world_size": 2, "epoch": 4, ' <<<"$f" || fail "$2: not 4 epochs on 2 ranks: $f"
}

echo "== straight run, backend auto"
out=$(torchrun a "${common[@]}" --epochs=4 --output_dir="$work/a") || { tail -n 20 <<<"$out"; fail "run a"; }
same_on_every_rank "$out" a
a=$(finals "$out" | head -n 1)
echo "$a"

echo "== the same seed again, --backend=gloo"
out=$(torchrun b "${common[@]}" --backend=gloo --epochs=4 --output_dir="$work/b") || { tail -n 20 <<<"$out"; fail "run b"; }
same_on_every_rank "$out" b
[[ -n "$(st "$work/a")" && "$(st "$work/a")" == "$(st "$work/b")" ]] ||
  { diff <(st "$work/a") <(st "$work/b") | head; fail "two Gloo runs of the same seed differ"; }
echo "two runs: bitwise equal ($(st "$work/a" | wc -c) bytes of ckpt show)"

echo "== 2 epochs, then resumed to 4"
out=$(torchrun c1 "${common[@]}" --epochs=2 --output_dir="$work/c") || { tail -n 20 <<<"$out"; fail "run c, first half"; }
out=$(torchrun c2 "${common[@]}" --epochs=4 --output_dir="$work/c" --resume) || { tail -n 20 <<<"$out"; fail "run c, resumed"; }
grep -q "resumed from $work/c/checkpoint_2_" <<<"$out" || fail "did not resume from epoch 2: $(grep -i resum <<<"$out")"
same_on_every_rank "$out" c
[[ "$(st "$work/a")" == "$(st "$work/c")" ]] || { diff <(st "$work/a") <(st "$work/c") | head; fail "the resumed run differs"; }
echo "resume: bitwise equal to the straight run"

echo "== a preemption signal (SIGTERM to rank 1 at iteration 150, in epoch 3): agreed, saved, resumed exactly"
out=$(torchrun p1 "${common[@]}" --epochs=4 --output_dir="$work/p" --inject_preempt=1:150) || { tail -n 20 <<<"$out"; fail "preempted run"; }
[[ $(finals "$out" | grep -c '"stopped_by": "preempted"') -eq 2 ]] || fail "both ranks must report preempted: $(finals "$out")"
[[ $(finals "$out" | grep -c '"iteration": 150,') -eq 2 ]] || fail "both ranks must stop at iteration 150: $(finals "$out")"
"$ckpt" verify "$work"/p/*.pt >/dev/null || fail "checkpoints after preemption do not verify"
out=$(torchrun p2 "${common[@]}" --epochs=4 --output_dir="$work/p" --resume) || { tail -n 20 <<<"$out"; fail "resume after preemption"; }
same_on_every_rank "$out" p
[[ "$(st "$work/a")" == "$(st "$work/p")" ]] || { diff <(st "$work/a") <(st "$work/p") | head; fail "the run resumed after preemption differs"; }
echo "preemption: both ranks stopped at iteration 150; resumed bitwise equal to the straight run"

echo "== 4 ranks: the same decisions on every rank"
out=$(timeout 300 "$py" -m torch.distributed.run --nproc_per_node=4 --redirects 2 --tee 2 --master_port "$port" \
  --log_dir "$work/logs-4" --no_python "$train" "${common[@]}" --epochs=2 --output_dir="$work/four" 2>&1) ||
  { tail -n 20 <<<"$out"; fail "4 ranks"; }
f=$(finals "$out")
[[ $(wc -l <<<"$f") -eq 4 ]] || fail "4 ranks: want 4 final lines: $f"
[[ $(sed 's/"rank": [0-9]*, //' <<<"$f" | sort -u | wc -l) -eq 1 ]] || fail "4 ranks decided differently: $f"
grep -q '"world_size": 4, "epoch": 2, ' <<<"$f" || fail "4 ranks: not 2 epochs on 4 ranks: $f"

echo "== the MPI run of the same seed"
mpi=(mpirun --oversubscribe -np 2)
[[ $(id -u) -eq 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(timeout 300 "${mpi[@]}" "$train" "${common[@]}" --epochs=4 --output_dir="$work/m" 2>&1) || { tail -n 20 <<<"$out"; fail "mpirun"; }
m=$(finals "$out" | head -n 1)
echo "$m"
"$py" - "$(field "$a" best_score)" "$(field "$m" best_score)" <<'PY' || fail "Gloo and MPI accuracies differ beyond tolerance"
import sys
g, m = float(sys.argv[1]), float(sys.argv[2])
print(f"best validation accuracy: gloo {g}, mpi {m}")
sys.exit(0 if abs(g - m) <= 0.01 else 1)
PY
echo OK
