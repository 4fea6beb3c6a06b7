#!/usr/bin/env bash
# Fails if engine/ or base/ reach LibTorch, MPI or NCCL, or a package above them.
set -euo pipefail
engine_deps=$1
base_deps=$2
status=0
check() {  # file, forbidden regex, what
  local hits
  hits=$(grep -E "$2" "$1" || true)
  if [[ -n "$hits" ]]; then
    echo "LAYERING VIOLATION: $3 depends on:"
    echo "$hits" | sed 's/^/  /'
    status=1
  fi
}
# The files must be non-empty: an empty query result would make the test pass vacuously.
[[ -s $engine_deps ]] || { echo "empty dependency list: $engine_deps"; exit 1; }
[[ -s $base_deps ]] || { echo "empty dependency list: $base_deps"; exit 1; }
grep -q '^//engine:engine$' "$engine_deps" || { echo "//engine:engine missing from its own deps"; exit 1; }
check "$engine_deps" '@ember_config//:(torch|nccl)|@system//:mpi|^//(handlers|tools)[:/]' "//engine"
check "$base_deps" '@ember_config//|@system//:mpi|^//(engine|distributed|handlers|tools)[:/]' "//base"
[[ $status -eq 0 ]] && echo "layering OK: $(wc -l <"$engine_deps") engine deps, $(wc -l <"$base_deps") base deps checked"
exit $status
