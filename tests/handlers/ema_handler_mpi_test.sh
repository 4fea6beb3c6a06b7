#!/usr/bin/env bash
# EMAHandler under real mpirun (ema_handler_mpi_main.cc): ranks with different data train with
# DataParallel + EMAHandler, and every rank's EMA parameters are bitwise equal (checked through
# the communicator on every rank, and here by the digests each rank prints). Then the EMAHandler
# created before DataParallel's broadcast: the digests must differ, so the comparison can fail.
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`
mpi+=(-np "$n")

out=$(timeout 120 "${mpi[@]}" "$binary" 2>&1)
rc=$?
echo "$out" | tail -n 20
[[ $rc -eq 0 ]] || fail "the checks exited $rc"
[[ $(grep -c "of $n: PASSED" <<<"$out") -eq $n ]] || fail "not every rank passed"
digests=$(sed -n 's/^rank [0-9]* ema digest \([0-9a-f]*\)$/\1/p' <<<"$out")
[[ $(wc -l <<<"$digests") -eq $n ]] || fail "not every rank printed its digest"
[[ $(sort -u <<<"$digests" | wc -l) -eq 1 ]] || fail "the ranks' EMA digests differ: $digests"

out=$(timeout 120 "${mpi[@]}" "$binary" ema_before_broadcast 2>&1)
rc=$?
echo "== EMAHandler created before DataParallel's broadcast: exit $rc"
grep "ema digest" <<<"$out"
[[ $rc -eq 0 ]] || fail "the run exited $rc"
digests=$(sed -n 's/^rank [0-9]* ema digest \([0-9a-f]*\)$/\1/p' <<<"$out")
[[ $(wc -l <<<"$digests") -eq $n ]] || fail "not every rank printed its digest"
[[ $(sort -u <<<"$digests" | wc -l) -eq $n ]] || fail "the digests agree although each EMA started from its own rank's initialisation"
echo OK
