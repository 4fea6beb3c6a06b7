#!/usr/bin/env bash
# Runs the MPI smoke binary on N ranks with mpirun inside bazel test's sandbox.
set -euo pipefail
binary=$1
n=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Under --config=asan: OpenMPI leaks at MPI_Finalize from components it has dlclose()d.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
out=$(timeout 120 mpirun --oversubscribe -np "$n" --mca btl self,vader "$binary")
echo "$out"
expected=$(( n * (n - 1) / 2 ))
count=$(grep -c "of $n: sum $expected\$" <<<"$out" || true)
if [[ $count -ne $n ]]; then
  echo "expected $n ranks to report sum $expected, got $count"
  exit 1
fi
