#!/usr/bin/env bash
# AgreeOnSettings under real mpirun on N ranks: every scenario of settings_agreement_scenarios.h
# (each rank checks its exact error itself and says so), and an MPMD job whose ranks get a
# different --lr on the command line. Every rank must report the same outcome, and the job must
# exit 1 on a mismatch (0 otherwise), with every rank's report printed.
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`

for scenario in same lr two_last extra order context long every empty_value; do
  out=$(timeout 120 "${mpi[@]}" -np "$n" "$binary" "$scenario" 2>&1)
  rc=$?
  echo "== $scenario: exit $rc"
  echo "$out" | grep -E "^rank " | sort | head -n 12
  [[ $(grep -c "^rank [0-9]*: expected: yes$" <<<"$out") -eq $n ]] || fail "$scenario: not every rank saw the expected outcome"
  if [[ $scenario == same ]]; then
    [[ $rc -eq 0 ]] || fail "$scenario: exit $rc"
    [[ $(grep -c "^rank [0-9]*: barrier: OK$" <<<"$out") -eq $n ]] || fail "$scenario: a later barrier failed"
  else
    [[ $rc -eq 1 ]] || fail "$scenario: exit $rc, expected 1"
    # The same error on every rank; the communicator poisoned with it.
    [[ $(grep "^rank [0-9]*: agreement: " <<<"$out" | sed 's/^rank [0-9]*: //' | sort -u | wc -l) -eq 1 ]] ||
      fail "$scenario: the ranks report different errors"
    [[ $(grep -c "^rank [0-9]*: barrier: FAILED_PRECONDITION: .*poisoned by an earlier error: .*differ across ranks" <<<"$out") -eq $n ]] ||
      fail "$scenario: the communicator is not poisoned on every rank"
  fi
done

# MPMD: one binary per rank group, the last rank with another --lr.
out=$(timeout 120 "${mpi[@]}" -np $((n - 1)) "$binary" mpmd 0.1 : -np 1 "$binary" mpmd 0.01 2>&1)
rc=$?
echo "== mpmd: exit $rc"
echo "$out" | grep -E "^rank " | sort
[[ $rc -eq 1 ]] || fail "mpmd: exit $rc, expected 1"
if [[ $n -eq 2 ]]; then want="--lr is 0.1 on rank 0, 0.01 on rank 1"; else want="--lr is 0.1 on ranks 0-$((n - 2)), 0.01 on rank $((n - 1))"; fi
[[ $(grep -cF "agreement: INVALID_ARGUMENT: trainer flags differ across ranks: $want" <<<"$out") -eq $n ]] ||
  fail "mpmd: not every rank names --lr and each rank's value"
echo OK
