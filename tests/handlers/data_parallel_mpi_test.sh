#!/usr/bin/env bash
# DataParallel under real mpirun on N ranks (data_parallel_mpi_main.cc): the checks on every
# rank, then a rank that stalls inside backward: every other rank must fail within the deadline,
# naming the step and the bucket, and the job must end non-zero instead of hanging.
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`
mpi+=(-np "$n")

out=$(timeout 300 "${mpi[@]}" "$binary" 2>&1)
rc=$?
echo "$out" | tail -n 40
[[ $rc -eq 0 ]] || fail "the checks exited $rc"
[[ $(grep -c "of $n: PASSED" <<<"$out") -eq $n ]] || fail "not every rank passed"

# Created before the World inside this launch: every rank refuses (issue 23: the replicas used to
# train alone and drift apart, exit 0).
out=$(timeout 120 "${mpi[@]}" "$binary" before_world 2>&1)
rc=$?
echo "== before_world: exit $rc"
grep -E "^rank " <<<"$out"
[[ $rc -eq 0 ]] || fail "before_world: exit $rc (a rank accepted a World-less DataParallel or ShardedSource)"
for ((r = 0; r < n; ++r)); do
  grep -qF "rank $r: DataParallel: FAILED_PRECONDITION: DataParallel: this process is one of $n ranks (launcher environment) but no World exists" <<<"$out" ||
    fail "before_world: rank $r's DataParallel did not refuse"
  grep -qF "rank $r: ShardedSource: FAILED_PRECONDITION: ShardedSource: this process is one of $n ranks (launcher environment) but no World exists" <<<"$out" ||
    fail "before_world: rank $r's ShardedSource did not refuse"
done

victim=$((n - 1))
start=$(date +%s)
out=$(timeout 120 "${mpi[@]}" "$binary" stall "$victim" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
echo "== rank $victim stalls in backward: exit $rc after ${took}s"
grep -E "^rank " <<<"$out"
[[ $rc -ne 0 && $rc -ne 124 ]] || fail "the job exited $rc"
for ((r = 0; r < victim; ++r)); do
  line=$(grep "^rank $r: " <<<"$out")
  grep -q "DEADLINE_EXCEEDED: DataParallel: step 1: gradient all-reduce of bucket [0-9]* of [0-9]* (" <<<"$line" ||
    { echo "$out" | tail -n 30; fail "rank $r did not report the deadline naming step and bucket: $line"; }
  secs=$(sed -n 's/.* after \([0-9.]*\) s$/\1/p' <<<"$line")
  awk -v s="$secs" 'BEGIN { exit !(s < 8) }' || fail "rank $r failed after ${secs}s (deadline 2 s, the stall lasts 10 s)"
done
echo OK
