#!/usr/bin/env bash
# The LibTorch 2.x compile check (issue 25): every source file of the repository that includes
# LibTorch, directly or through our own headers, must compile against LibTorch 2.x as well as
# against the machine's LibTorch 1.13 (the GPU machines build with PyTorch 2.x wheels).
#   tools/libtorch2_check.sh [--xml FILE] [--jobs N]
# Unpacks Debian trixie's libtorch-dev (2.6, a 2.4 MB .deb of headers), carried in
# third_party/libtorch2/ and checked against its SHA-256 so that CI needs no network, with dpkg -x
# into a private cache, .cache/libtorch2/ (git-ignored; kept between runs). Another
# LIBTORCH2_VERSION is fetched with apt into that cache (never the machine's apt sources), every
# network step under a timeout (EMBER_FETCH_TIMEOUT, 300 s). Then runs `g++ -std=c++20 -fsyntax-only` on each file with
# 2.6's include folders ahead of the machine's (Abseil, GoogleTest, nlohmann, OpenMPI and CUDA
# come from the machine), torch/torch.h precompiled once and forced in front of each file. Files that use NCCL compile with EMBER_HAVE_NCCL when
# /usr/local/cuda/include/nccl.h exists. Prints each failing file with its first errors, a line
# "libtorch2: N files, N failed", writes a JUnit-style XML (one test case per file) with --xml,
# and exits non-zero when any file fails or the headers cannot be had.
set -uo pipefail
cd "$(dirname "$0")/.."
xml=
jobs=2
while [[ $# -gt 0 ]]; do
  case $1 in
    --xml) xml=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "tools/libtorch2_check.sh: unknown argument '$1'; allowed: --xml FILE, --jobs N" >&2; exit 2 ;;
  esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "tools/libtorch2_check.sh: --jobs '$jobs' is not a positive integer" >&2; exit 2; }
start=$SECONDS
version=${LIBTORCH2_VERSION:-2.6.0+dfsg-7}
cache=.cache/libtorch2
root=$cache/$version
fail_setup() {
  echo "libtorch2: $*" >&2
  if [[ -n $xml ]]; then
    printf '<testsuites><testsuite name="libtorch2"><testcase name="setup"><failure message="%s"/></testcase></testsuite></testsuites>\n' \
      "$(echo "$*" | sed 's/[<>&"]/_/g')" >"$xml"
  fi
  exit 1
}

# ---- the headers: trixie's libtorch-dev, once -------------------------------------------------
carried=third_party/libtorch2/libtorch-dev_2.6.0+dfsg-7_amd64.deb
carried_sha256=d63886ac7482184e96d38cbbbb346430f1cc3a68b59319eb2ca1ababd501535b
fetch_timeout=${EMBER_FETCH_TIMEOUT:-300}
[[ $fetch_timeout =~ ^[1-9][0-9]*$ ]] ||
  fail_setup "EMBER_FETCH_TIMEOUT='$fetch_timeout' is not a positive number of seconds"
if [[ ! -f $root/usr/include/torch/csrc/api/include/torch/torch.h ]]; then
  apt_dir=$(realpath -m "$cache/apt")
  rm -rf "$apt_dir" && mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
  if [[ $version == 2.6.0+dfsg-7 && -f $carried ]]; then
    sum=$(sha256sum "$carried" | cut -d' ' -f1)
    [[ $sum == "$carried_sha256" ]] ||
      fail_setup "$carried has SHA-256 $sum, expected $carried_sha256 (a damaged or replaced file)"
    cp "$carried" "$apt_dir/deb/"
  else
    echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
    apt_opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
              -o Debug::NoLocking=1 -o APT::Sandbox::User=root
              -o Acquire::http::Timeout=30 -o Acquire::Retries=1 -o Acquire::Languages=none)
    echo "libtorch2: fetching Debian trixie's libtorch-dev=$version (private apt lists in $apt_dir, at most ${fetch_timeout} s per step)"
    timeout "$fetch_timeout" apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 ||
      { tail -n 20 "$apt_dir/update.log"; fail_setup "apt-get update of trixie's lists failed or took over ${fetch_timeout} s (see above)"; }
    (cd "$apt_dir/deb" && timeout "$fetch_timeout" apt-get "${apt_opts[@]}" download "libtorch-dev=$version") >"$apt_dir/download.log" 2>&1 ||
      { tail -n 20 "$apt_dir/download.log"; fail_setup "apt-get download libtorch-dev=$version failed or took over ${fetch_timeout} s (see above)"; }
  fi
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  dpkg -x "$apt_dir"/deb/libtorch-dev_*.deb "$root.tmp" || fail_setup "dpkg -x of the .deb failed"
  rm -rf "$root.tmp/usr/lib" "$apt_dir/lists" "$apt_dir/cache"  # headers are all this check needs
  rm -rf "$root" && mv "$root.tmp" "$root"
fi
inc=$root/usr/include
[[ -f $inc/torch/csrc/api/include/torch/torch.h ]] || fail_setup "no torch.h under $inc"

# ---- the files: every .cc that reaches a torch/ATen/c10 header through our includes ------------
mapfile -t files < <(tools/sources_including.py --dirs base,engine,distributed,handlers,tools,tests,examples \
  torch/ ATen/ c10/)
[[ ${#files[@]} -gt 0 ]] || fail_setup "found no source file that includes LibTorch (run from the repository root)"

flags=(-std=c++20 -w -I. -isystem "$inc" -isystem "$inc/torch/csrc/api/include"
       -isystem /usr/lib/x86_64-linux-gnu/openmpi/include -isystem /usr/local/cuda/include)
if [[ -f /usr/local/cuda/include/nccl.h ]]; then flags+=(-DEMBER_HAVE_NCCL -DEMBER_TEST_CUDA); fi
logs=$(mktemp -d /tmp/ember-libtorch2.XXXXXX)
trap 'rm -rf "$logs"' EXIT
export logs
# torch/torch.h parsed once into a precompiled header (about 650 MB, deleted at the end), then
# forced in front of every file: a file takes seconds instead of a minute and more.
echo '#include <torch/torch.h>' >"$logs/ember_torch.h"
if ! g++ "${flags[@]}" -x c++-header "$logs/ember_torch.h" -o "$logs/ember_torch.h.gch" \
     >"$logs/pch.log" 2>&1; then
  head -n 20 "$logs/pch.log"
  fail_setup "torch/torch.h of LibTorch $version does not compile on its own (see above)"
fi
flags+=(-fsyntax-only -include "$logs/ember_torch.h")
printf '%s\n' "${files[@]}" | xargs -P "$jobs" -I{} bash -c '
  f=$1; shift
  log="$logs/$(echo "$f" | tr / _).log"
  s=$(date +%s%N)
  if g++ "$@" "$f" >"$log" 2>&1; then r=0; else r=1; fi
  ms=$(( ($(date +%s%N) - s) / 1000000 ))
  printf "%d %d.%03d\n" "$r" $((ms / 1000)) $((ms % 1000)) >"$log.rc"
' _ {} "${flags[@]}"

failed=0
cases=()
for f in "${files[@]}"; do
  log="$logs/$(echo "$f" | tr / _).log"
  read -r rc secs <"$log.rc" 2>/dev/null || { rc=1; secs=0; }
  if [[ $rc -ne 0 ]]; then
    failed=$((failed + 1))
    echo "--- FAILED: $f (against LibTorch $version)"
    grep -m 8 -E 'error' "$log" || head -n 8 "$log"
  fi
  cases+=("$f $rc $secs")
done
if [[ -n $xml ]]; then
  logs_dir=$logs /usr/bin/python3 - "$xml" "${cases[@]}" <<'PY'
import os, sys
from xml.sax.saxutils import escape, quoteattr
out, cases = sys.argv[1], sys.argv[2:]
rows = []
for c in cases:
    f, rc, secs = c.rsplit(" ", 2)
    body = ""
    if rc != "0":
        log = os.path.join(os.environ["logs_dir"], f.replace("/", "_") + ".log")
        text = open(log, errors="replace").read()[:4000] if os.path.exists(log) else "no log"
        body = "<failure message=\"does not compile against LibTorch 2.x\">%s</failure>" % escape(text)
    rows.append("<testcase classname=\"libtorch2\" name=%s time=\"%s\">%s</testcase>" % (quoteattr(f), secs, body))
with open(out, "w") as fh:
    fh.write("<testsuites><testsuite name=\"libtorch2\">%s</testsuite></testsuites>\n" % "".join(rows))
PY
fi
echo "libtorch2: ${#files[@]} files, $failed failed, against LibTorch $version, in $((SECONDS - start)) s"
[[ $failed -eq 0 ]]
