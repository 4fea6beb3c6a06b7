# Helpers shared by the end-to-end test scripts (sourced).
#   MODE          the test's name, for the skip report
#   SKIP_XML      where Bazel expects test.xml (saved before XML_OUTPUT_FILE is unset)

fail() { echo "FAIL: $*"; exit 1; }

# xml_escape TEXT: TEXT as XML character data or an attribute value: & < > " ' escaped, newline,
# tab and carriage return as character references, the control characters XML 1.0 forbids (even
# as references) as '?', bytes that are not UTF-8 dropped.
xml_escape() {
  local s=$1
  if command -v iconv >/dev/null; then
    s=$(printf '%s' "$s" | iconv -f UTF-8 -t UTF-8 -c 2>/dev/null; printf .)
  else
    s=$(printf '%s' "$s" | LC_ALL=C tr -d '\200-\377'; printf .)
  fi
  s=$(printf '%s' "${s%.}" | LC_ALL=C tr '\001-\010\013\014\016-\037' '?'; printf .)
  s=${s%.}
  s=${s//'&'/'&amp;'}
  s=${s//'<'/'&lt;'}
  s=${s//'>'/'&gt;'}
  s=${s//'"'/'&quot;'}
  s=${s//"'"/'&apos;'}
  s=${s//$'\n'/'&#10;'}
  s=${s//$'\t'/'&#9;'}
  s=${s//$'\r'/'&#13;'}
  printf '%s' "$s"
}

# write_skip_xml FILE NAME MESSAGE: a JUnit test.xml with one test case NAME, skipped with
# MESSAGE (any text: escaped here), as Bazel and .ci/run read it.
write_skip_xml() {
  local name message
  name=$(xml_escape "$2")
  message=$(xml_escape "$3")
  printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="%s" tests="1" skipped="1"><testcase name="%s" result="skipped"><skipped message="%s"/></testcase></testsuite></testsuites>\n' \
    "$name" "$name" "$message" >"$1"
}

# Reports the test as skipped, with the reason, in the test.xml that .ci/run counts.
skip() {
  echo "SKIPPED: $*"
  [[ -n ${SKIP_XML:-} ]] && write_skip_xml "$SKIP_XML" "$MODE" "$*"
  exit 0
}

# descendants PID: PID's child processes, theirs, and so on.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
# kill_jobs: ends this script's background jobs and every process under them (trap it on EXIT,
# so that a test that fails midway leaves no trainer or mpirun running).
kill_jobs() {
  local j pids=()
  for j in $(jobs -pr); do pids+=("$j" $(descendants "$j")); done
  [[ ${#pids[@]} -eq 0 ]] || kill -9 "${pids[@]}" 2>/dev/null
  return 0
}

# field LINE NAME: the value of "NAME" in a one-line JSON object.
field() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" <<<"$1" | head -n 1 | tr -d '"'; }

# The trainer's final lines in an output.
finals() { grep -E '^\{"rank"' <<<"$1"; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Under --config=asan: no leak report from processes that may start MPI. OpenMPI leaks by design
# at MPI_Finalize from components it has already dlclose()d, so LSan cannot even name them; every
# in-process test keeps leak detection (tools/lsan_suppressions.txt).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
SKIP_XML=${XML_OUTPUT_FILE:-}
# The ranks are not the test: keep gtest in them from writing Bazel's files.
unset XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE
