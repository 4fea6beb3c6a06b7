#!/usr/bin/env bash
# Runs the MPI conformance suite on N ranks, then the fault cases: a rank that stalls (SIGSTOP)
# or exits mid-run must make every other rank fail within the deadline, naming the event and
# iteration, and the job must end non-zero instead of hanging.
set -uo pipefail
binary=$1
n=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Under --config=asan: OpenMPI leaks at MPI_Finalize from components it has already dlclose()d
# (LSan cannot name them); leak detection stays on for every in-process test.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
# The ranks are not the test: keep gtest in them from writing bazel's test.xml.
unset XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE GTEST_OUTPUT
mpi=(mpirun --oversubscribe -np "$n" --mca btl self,vader)
fail() { echo "FAIL: $*"; exit 1; }

out=$(timeout 300 "${mpi[@]}" "$binary" 2>&1)
rc=$?
echo "$out" | tail -n 40
[[ $rc -eq 0 ]] || fail "conformance suite exited $rc"
[[ $(grep -c "of $n: PASSED" <<<"$out") -eq $n ]] || fail "not every rank passed"

for kind in stall swallow exit; do
  victim=$((n - 1))
  start=$(date +%s)
  out=$(timeout 120 "${mpi[@]}" "$binary" "$kind" "$victim" 2>&1)
  rc=$?
  took=$(( $(date +%s) - start ))
  echo "== $kind of rank $victim: exit $rc after ${took}s"
  echo "$out" | grep -E "^rank " | head -n 20
  [[ $rc -ne 0 ]] || fail "$kind: the job exited 0"
  [[ $rc -ne 124 ]] || fail "$kind: the job hung"
  if [[ $kind != exit ]]; then
    # Every survivor detects the stall itself (mpirun cannot) and names event and iteration;
    # with a swallowing EXCEPTION_RAISED handler too.
    for ((r = 0; r < victim; ++r)); do
      grep -q "^rank $r: DEADLINE_EXCEEDED: agreement of 1 value(s) from 1 synchronized handler(s) at ITERATION_COMPLETED failed on rank $r .* \[at ITERATION_COMPLETED, epoch 1, iteration 3\]" <<<"$out" ||
        fail "$kind: rank $r did not report the deadline with event and iteration"
    done
  fi
  if [[ $kind == swallow ]]; then
    [[ $(grep -c "EXCEPTION_RAISED handler called 1 time(s)" <<<"$out") -eq $victim ]] ||
      fail "swallow: the handler must observe the failure exactly once on each survivor"
  fi
  [[ $took -lt 60 ]] || fail "$kind: took ${took}s"
done
echo OK
