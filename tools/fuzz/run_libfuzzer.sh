#!/usr/bin/env bash
# The long, coverage-guided fuzz run: builds a fuzz target with clang's libFuzzer + ASan + UBSan
# (Debian's clang-14 and libclang-rt-14-dev; tools/setup.sh installs them) and runs it.
#   tools/fuzz/run_libfuzzer.sh checkpoint_reader|launcher_env|event_filter [SECONDS]
# New crashes are written as crash-* files in $TMPDIR/ember-fuzz-TARGET/: add each one to
# tools/fuzz/corpus/<target>/ so the bazel test replays it from then on.
set -euo pipefail
target=$1
seconds=${2:-300}
cd "$(dirname "$0")/../.."
case $target in
  checkpoint_reader) srcs=(handlers/torch_serialization.cc handlers/value.cc base/crc32.cc) ;;
  launcher_env) srcs=(distributed/launcher_env.cc) ;;
  event_filter) srcs=(engine/events.cc engine/engine.cc base/clock.cc distributed/communicator.cc distributed/consensus.cc) ;;
  *) echo "unknown target '$target'; allowed: checkpoint_reader, launcher_env, event_filter" >&2; exit 2 ;;
esac
out=${TMPDIR:-/tmp}/ember-fuzz-$target
mkdir -p "$out/corpus"
cp tools/fuzz/corpus/"$target"/* "$out/corpus/"
absl_libs=$(ls /usr/lib/x86_64-linux-gnu/libabsl_*.so | sed 's|.*/lib\(absl_[a-z0-9_]*\)\.so|-l\1|' | tr '\n' ' ')
clang++-14 -std="${STD:-c++20}" -O1 -g -fsanitize=fuzzer,address,undefined -I. \
  -isystem /usr/include/torch/csrc/api/include \
  "tools/fuzz/${target}_fuzzer.cc" "${srcs[@]}" \
  -ltorch -ltorch_cpu -lc10 $absl_libs -lz -o "$out/fuzzer"
echo "fuzzing $target for ${seconds}s (corpus: $out/corpus)"
# -detect_leaks=0: LibTorch 1.13's zip reader (miniz) leaks a few hundred bytes when it rejects a
# malformed archive; that is outside Ember and would stop every run at the first bad file.
"$out/fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -detect_leaks=0 -artifact_prefix="$out/" "$out/corpus"
