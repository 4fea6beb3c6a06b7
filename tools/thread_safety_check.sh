#!/usr/bin/env bash
# The thread-safety check (issue 22): clang's -Wthread-safety analysis over every non-test source
# of base/, engine/, distributed/, handlers/ and tools/ (their testing/ helpers included) that
# reaches an annotated mutex through its includes, so that
# each member declared ABSL_GUARDED_BY(mu_) is only touched with mu_ held and each function
# declared ABSL_EXCLUSIVE_LOCKS_REQUIRED / ABSL_LOCKS_EXCLUDED is called accordingly. gcc (the
# Bazel build) ignores the annotations; this is where they are checked. The mutexes are
# ember::Mutex (base/mutex.h), which clang understands; a std::mutex would be invisible to it.
#   tools/thread_safety_check.sh [--jobs N] [FILE.cc ...]
# Runs `clang++-14 -std=c++20 -fsyntax-only` on each file with the include folders the Bazel build
# uses (the repository root; Debian's Abseil, GoogleTest, nlohmann under /usr/include; LibTorch's
# API folder; OpenMPI's; CUDA's for NCCL), every other warning off and thread-safety warnings
# (-Wthread-safety -Wthread-safety-beta) as errors; a file clang cannot compile fails as well (it
# could not be checked). Prints each failing file with its diagnostics,
# then a line "thread-safety: N files, N failed", and exits non-zero when any file fails.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=2
files=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --jobs) jobs=$2; shift 2 ;;
    -*) echo "tools/thread_safety_check.sh: unknown argument '$1'; allowed: --jobs N, FILE.cc ..." >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "tools/thread_safety_check.sh: --jobs '$jobs' is not a positive integer" >&2; exit 2; }
clang=${CLANG:-clang++-14}
command -v "$clang" >/dev/null || { echo "thread-safety: $clang not found (Debian: apt-get install clang-14)" >&2; exit 1; }
start=$SECONDS
if [[ ${#files[@]} -eq 0 ]]; then
  # Only a file that reaches an annotated capability (base/mutex.h, or Abseil's annotated headers)
  # can draw a thread-safety diagnostic: clang's analysis knows nothing of unannotated types, and
  # libstdc++'s std::mutex carries no annotations. The others are not parsed (each file costs
  # seconds of LibTorch headers).
  mapfile -t files < <(tools/sources_including.py --no-tests --dirs base,engine,distributed,handlers,tools \
    base/mutex.h absl/synchronization/mutex.h absl/base/thread_annotations.h)
fi
[[ ${#files[@]} -gt 0 ]] || { echo "thread-safety: no source files found (run from the repository root)" >&2; exit 1; }
# Locking the analysis cannot see: a standard mutex or condition variable in the library's code
# (base/mutex.h alone wraps them, annotated). Each file that uses one fails, so that new locking
# cannot escape the check by not including base/mutex.h.
mapfile -t unchecked < <(grep -rlE 'std::(mutex|recursive_mutex|timed_mutex|shared_mutex|shared_timed_mutex|condition_variable(_any)?)\b' \
  base engine distributed handlers --include='*.h' --include='*.cc' | grep -vx 'base/mutex.h' | sort)
for f in "${files[@]}"; do
  [[ -f $f ]] || { echo "tools/thread_safety_check.sh: no such file '$f'" >&2; exit 2; }
done

# LibTorch 1.13 does not compile under clang 14 in C++20 mode with libstdc++ 12 as it is: its
# headers move std::vector<IValue> while IValue is incomplete (ATen/core/List.h), and clang
# instantiates the C++20 constexpr members of std::vector and std::string on sight. The check
# therefore turns those constexpr markings off (-D_GLIBCXX20_CONSTEXPR=) and uses the old-ABI
# std::string, whose literals are not constexpr (-D_GLIBCXX_USE_CXX11_ABI=0). Neither changes what
# the analysis sees of our code: nothing is compiled to objects here, only checked.
flags=(-std=c++20 -D_GLIBCXX20_CONSTEXPR= -D_GLIBCXX_USE_CXX11_ABI=0
       -fsyntax-only -I. -isystem /usr/include/torch/csrc/api/include
       -isystem /usr/lib/x86_64-linux-gnu/openmpi/include -DOMPI_SKIP_MPICXX
       -Wno-everything -Wthread-safety -Wthread-safety-beta -Werror=thread-safety
       -Werror=thread-safety-beta -fno-caret-diagnostics)
if [[ -f /usr/local/cuda/include/nccl.h ]]; then flags+=(-isystem /usr/local/cuda/include -DEMBER_HAVE_NCCL); fi
logs=$(mktemp -d /tmp/ember-thread-safety.XXXXXX)
trap 'rm -rf "$logs"' EXIT
export logs clang
printf '%s\n' "${files[@]}" | xargs -P "$jobs" -I{} bash -c '
  f=$1; shift
  log="$logs/$(echo "$f" | tr / _).log"
  if "$clang" "$@" "$f" >"$log" 2>&1; then echo 0 >"$log.rc"; else echo 1 >"$log.rc"; fi
' _ {} "${flags[@]}"

failed=0
for f in "${unchecked[@]}"; do
  failed=$((failed + 1))
  echo "--- FAILED: $f: uses a standard mutex or condition variable, which clang's analysis cannot check; use ember::Mutex, MutexLock and CondVar (base/mutex.h) with ABSL_GUARDED_BY"
  grep -nE 'std::(mutex|recursive_mutex|timed_mutex|shared_mutex|shared_timed_mutex|condition_variable)' "$f" | head -n 5
done
for f in "${files[@]}"; do
  log="$logs/$(echo "$f" | tr / _).log"
  rc=$(cat "$log.rc" 2>/dev/null || echo 1)
  if [[ $rc -ne 0 ]]; then
    failed=$((failed + 1))
    echo "--- FAILED: $f"
    grep -E 'error|warning' "$log" | head -n 20 || head -n 20 "$log"
  fi
done
echo "thread-safety: $(( ${#files[@]} + ${#unchecked[@]} )) files, $failed failed, in $((SECONDS - start)) s"
[[ $failed -eq 0 ]]
