# Helpers shared by the end-to-end test scripts (sourced).
#   MODE          the test's name, for the skip report
#   SKIP_XML      where Bazel expects test.xml (saved before XML_OUTPUT_FILE is unset)

fail() { echo "FAIL: $*"; exit 1; }

# Reports the test as skipped, with the reason, in the test.xml that .ci/run counts.
skip() {
  echo "SKIPPED: $*"
  if [[ -n ${SKIP_XML:-} ]]; then
    printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="%s" tests="1" skipped="1"><testcase name="%s" result="skipped"><skipped message="%s"/></testcase></testsuite></testsuites>\n' \
      "$MODE" "$MODE" "$*" >"$SKIP_XML"
  fi
  exit 0
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
