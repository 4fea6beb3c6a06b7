#!/usr/bin/env bash
# SupervisedStep under real mpirun on N ranks (supervised_step_mpi_main.cc): gradient
# accumulation and clipping, one reduce per window, checked on every rank; then ranks that ask for
# different accumulation steps: Create must fail on every rank naming the setting and the ranks'
# values, and the job must end non-zero instead of hanging.
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`
mpi+=(-np "$n")

out=$(timeout 120 "${mpi[@]}" "$binary" 2>&1)
rc=$?
echo "$out" | tail -n 40
[[ $rc -eq 0 ]] || fail "the checks exited $rc"
[[ $(grep -c "of $n: PASSED" <<<"$out") -eq $n ]] || fail "not every rank passed"

out=$(timeout 60 "${mpi[@]}" "$binary" mismatch 2>&1)
rc=$?
echo "== rank 1 asks for accumulation_steps 3, the others 2: exit $rc"
grep -E "^rank " <<<"$out"
[[ $rc -ne 0 && $rc -ne 124 ]] || fail "the job exited $rc"
for ((r = 0; r < n; ++r)); do
  line=$(grep "^rank $r: " <<<"$out")
  grep -q "SupervisedStep.*differ across ranks: accumulation_steps is 2 on rank.*3 on rank 1" <<<"$line" ||
    { echo "$out" | tail -n 30; fail "rank $r did not name the differing accumulation_steps: $line"; }
done

out=$(timeout 60 "${mpi[@]}" "$binary" mismatch_lr 2>&1)
rc=$?
echo "== rank 1's SGD has lr 0.05 and momentum 0.9, the others' lr 0.1 and momentum 0: exit $rc"
grep -E "^rank " <<<"$out"
[[ $rc -ne 0 && $rc -ne 124 ]] || fail "mismatch_lr: the job exited $rc"
for ((r = 0; r < n; ++r)); do
  line=$(grep "^rank $r: " <<<"$out")
  grep -q "SupervisedStep.*differ across ranks: optimizer.param_groups\[0\] is [0-9]* tensors, lr=0.1 momentum=0 dampening=0 weight_decay=0 nesterov=0 on rank.*, [0-9]* tensors, lr=0.05 momentum=0.9 dampening=0 weight_decay=0 nesterov=0 on rank 1" <<<"$line" ||
    { echo "$out" | tail -n 30; fail "mismatch_lr: rank $r did not name the differing optimizer settings: $line"; }
done
echo OK
