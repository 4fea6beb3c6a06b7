#!/usr/bin/env bash
# The skip report of the end-to-end tests (lib.sh's skip and write_skip_xml, the writer every
# script here uses) escapes what it writes: a skip whose test name and message hold quotes, an
# ampersand, angle brackets, newlines, a tab, control characters and a byte that is not UTF-8
# gives a test.xml that Python's ElementTree reads back to the same text, and that .ci/run's own
# counting code (its Python block, taken from the source tree) counts as 1 skipped, 0 failed.
# The same message written without escaping must be counted as failed (the check can fail).
# Needs nothing from the machine; writes only under TEST_TMPDIR.
set -uo pipefail
MODE=report_escape
source "$(dirname "$0")/lib.sh"
src=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
[[ -f $src/.ci/run ]] || fail "the source tree's .ci/run not found from $0"
tmp=${TEST_TMPDIR:-$(mktemp -d)}/report_escape
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# .ci/run's counter: the Python between "<<'PY'" and "PY", run in DIR over DIR/bazel-testlogs.
awk '/<<.PY.$/ && !done {on = 1; next} /^PY$/ && on {on = 0; done = 1} on' "$src/.ci/run" >"$tmp/count.py"  # the first block: count()
grep -q 'bazel-testlogs/\*\*/test.xml' "$tmp/count.py" || fail ".ci/run's counting block not found: $(cat "$tmp/count.py")"
count() { (cd "$1" && : >counts && /usr/bin/python3 "$tmp/count.py" check 0 counts 2>&1); }

name=$'report "escape" & <name>\'s'
message=$'invalid ownership of "/var/log/munge" & <friends>; it\'s\n  second line\twith a tab\x01\x1b[0m, caf\xc3\xa9, bad byte \xff end'
expected=$'invalid ownership of "/var/log/munge" & <friends>; it\'s\n  second line\twith a tab??[0m, caf\xc3\xa9, bad byte  end'

# 1. Through the shared writer, exactly as a test skips (skip exits; hence the subshell).
mkdir -p "$tmp/escaped/bazel-testlogs/t"
out=$(SKIP_XML=$tmp/escaped/bazel-testlogs/t/test.xml MODE=$name; skip "$message") || fail "skip exited non-zero"
grep -q '^SKIPPED: invalid ownership' <<<"$out" || fail "skip did not print the reason: $out"
/usr/bin/python3 - "$tmp/escaped/bazel-testlogs/t/test.xml" "$name" "$expected" <<'PY' || fail "test.xml does not read back: $(cat "$tmp/escaped/bazel-testlogs/t/test.xml")"
import sys
import xml.etree.ElementTree as ET
path, name, expected = sys.argv[1], sys.argv[2], sys.argv[3]
root = ET.parse(path).getroot()
cases = list(root.iter("testcase"))
assert len(cases) == 1, cases
assert cases[0].get("name") == name, repr(cases[0].get("name"))
assert root.find("testsuite").get("name") == name
got = cases[0].find("skipped").get("message")
assert got == expected, f"{got!r} != {expected!r}"
print("test.xml reads back:", repr(got))
PY
got=$(count "$tmp/escaped")
echo ".ci/run counts: $got"
[[ $got == "[check] 0 passed, 0 failed, 1 skipped" ]] || fail ".ci/run miscounts the escaped skip: $got"

# 2. The control: the same text unescaped (as lib.sh once wrote it) is what .ci/run counted as a
# failure; if this passed, the check above would prove nothing.
mkdir -p "$tmp/raw/bazel-testlogs/t"
printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="%s" tests="1" skipped="1"><testcase name="%s" result="skipped"><skipped message="%s"/></testcase></testsuite></testsuites>\n' \
  "$name" "$name" "$message" >"$tmp/raw/bazel-testlogs/t/test.xml"
got=$(count "$tmp/raw")
grep -q "^\[check\] 0 passed, 1 failed, 0 skipped$" <<<"$got" || fail "the unescaped control was not counted as failed: $got"

# 3. Every character that needs it, one by one, and plain text untouched.
chars=('&' '<' '>' '"' "'" $'\n' $'\t' $'\r')
refs=('&amp;' '&lt;' '&gt;' '&quot;' '&apos;' '&#10;' '&#9;' '&#13;')
for i in "${!chars[@]}"; do
  e=$(xml_escape "a${chars[i]}b")
  [[ $e == "a${refs[i]}b" ]] || fail "xml_escape gives $(printf %q "$e") for $(printf %q "a${chars[i]}b")"
done
[[ $(xml_escape 'plain text 1.0 (ok) [x] /a/b') == 'plain text 1.0 (ok) [x] /a/b' ]] || fail "plain text changed"
echo OK
