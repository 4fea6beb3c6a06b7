#!/usr/bin/env bash
# Fails if base/, distributed/ or engine/ reach what is above them (see BUILD), or if one of their
# targets is not covered by the queries.
set -euo pipefail
base_deps=$1 distributed_deps=$2 engine_deps=$3
shift 3
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
for f in "$base_deps" "$distributed_deps" "$engine_deps"; do
  # An empty query result would make the test pass vacuously.
  [[ -s $f ]] || { echo "empty dependency list: $f"; exit 1; }
done
# Every target declared in the checked packages is in the queries.
covered=$(cat "$base_deps" "$distributed_deps" "$engine_deps")
for build in "$@"; do
  pkg=${build%/BUILD}
  pkg=${pkg#./}
  pkg=//${pkg##*execroot/ember/}
  for name in $(sed -n 's/^ *name = "\([^"]*\)".*/\1/p' "$build"); do
    grep -qx -- "$pkg:$name" <<<"$covered" || { echo "NOT COVERED: $pkg:$name (add it to tests/layering/BUILD)"; status=1; }
  done
done
check "$base_deps" '@ember_config//|@system//:mpi|^//(engine|distributed|handlers|tools)[:/]' "//base"
check "$distributed_deps" '@ember_config//:torch|^//(engine|handlers|tools)[:/]' "//distributed"
check "$engine_deps" '@ember_config//:(torch|nccl)|@system//:mpi|^//(handlers|tools)[:/]' "//engine"
[[ $status -eq 0 ]] && echo "layering OK: $(wc -l <"$base_deps") base, $(wc -l <"$distributed_deps") distributed, $(wc -l <"$engine_deps") engine deps checked"
exit $status
