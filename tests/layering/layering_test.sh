#!/usr/bin/env bash
# Fails if a package reaches what is above it (see BUILD), if one of the library targets of the
# checked packages is not covered by the queries, or if a public target is missing from the
# "Public targets" table of docs/library.md (a row of that table: the target elsewhere in the text
# does not count).
set -euo pipefail
base_deps=$1 distributed_deps=$2 engine_deps=$3 serialization_deps=$4 checkpoint_deps=$5 parallel_deps=$6
handlers_deps=$7 library_md=$8
shift 8
all_deps=("$base_deps" "$distributed_deps" "$engine_deps" "$serialization_deps" "$checkpoint_deps"
  "$parallel_deps" "$handlers_deps")
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
for f in "${all_deps[@]}"; do
  # An empty query result would make the test pass vacuously.
  [[ -s $f ]] || { echo "empty dependency list: $f"; exit 1; }
done
covered=$(cat "${all_deps[@]}")
# The rows of the "Public targets" table: from its heading to the next heading.
table=$(awk '/^## Public targets$/ {on = 1; next} /^#/ {on = 0} on && /^\| `/' "$library_md")
[[ -n $table ]] || { echo "no \"## Public targets\" table in $library_md"; exit 1; }
public=0
for build in "$@"; do
  pkg=${build%/BUILD}
  pkg=${pkg#./}
  pkg=//${pkg##*execroot/ember/}
  # Every library target declared in the checked packages is in the queries.
  for name in $(sed -n 's/^ *name = "\([^"]*\)".*/\1/p' "$build"); do
    grep -qx -- "$pkg:$name" <<<"$covered" || { echo "NOT COVERED: $pkg:$name (add it to tests/layering/BUILD)"; status=1; }
  done
  # Public targets: those with visibility public, or every target of a package whose default is.
  default_public=0
  grep -q 'default_visibility = \["//visibility:public"\]' "$build" && default_public=1
  while read -r name vis; do
    [[ $vis == public || ( $vis == default && $default_public == 1 ) ]] || continue
    public=$((public + 1))
    short=$pkg:$name
    [[ $name == "${pkg##*/}" ]] && short=$pkg  # //engine for //engine:engine
    grep -qF -- "| \`$short\` |" <<<"$table" || { echo "UNDOCUMENTED PUBLIC TARGET: $pkg:$name (docs/library.md, \"Public targets\")"; status=1; }
  done < <(awk '
    /^[a-z_]+\(/ { if (name != "") print name, vis; name = ""; vis = "default" }
    /^    name = "/ { split($0, a, "\""); name = a[2] }
    /^    visibility = \["\/\/visibility:public"\]/ { vis = "public" }
    /^    visibility = \[$/ || /^    visibility = \["\/\/[^v]/ { vis = "restricted" }
    END { if (name != "") print name, vis }' "$build")
done
check "$base_deps" '@ember_config//|@system//:mpi|^//(engine|distributed|handlers|tools)[:/]' "//base"
check "$distributed_deps" '@ember_config//:torch|^//(engine|handlers|tools)[:/]' "//distributed"
check "$engine_deps" '@ember_config//:(torch|nccl)|@system//:mpi|^//(handlers|tools)[:/]' "//engine"
check "$serialization_deps" '@ember_config//:nccl|@system//:mpi|^//(engine|distributed|tools)|^//handlers(:|/checkpoint|/parallel)' "//handlers/serialization"
check "$checkpoint_deps" '^//(tools|tests|examples)[:/]|^//handlers:|^//handlers/parallel[:/]' "//handlers/checkpoint"
check "$parallel_deps" '^//(tools|tests|examples)[:/]|^//handlers:' "//handlers/parallel"
check "$handlers_deps" '^//(tools|tests|examples)[:/]|^//handlers/parallel[:/]' "//handlers"
[[ $status -eq 0 ]] && echo "layering OK: $(cat "${all_deps[@]}" | wc -l) deps checked; $public public targets, each in docs/library.md"
exit $status
