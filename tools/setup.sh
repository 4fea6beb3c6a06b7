#!/usr/bin/env bash
# Installs exactly the Debian 12 packages Ember needs to build, test and run.
# Idempotent: safe to rerun. Works as root; uses sudo otherwise.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-platforms         # Bazel 4.2.3 (WORKSPACE mode) and @platforms
  build-essential                         # g++ 12
  libtorch-dev                            # LibTorch 1.13.1 (CPU)
  libgloo-dev                             # Gloo headers: the CPU backend without MPI (torchrun, Kubernetes)
  libopenmpi-dev openmpi-bin              # OpenMPI 4.1.4
  libabsl-dev                             # Abseil 20220623
  libgtest-dev libgmock-dev               # GoogleTest / GoogleMock 1.12
  libbenchmark-dev                        # Google Benchmark 1.7
  libgoogle-glog-dev                      # glog (LibTorch already depends on it)
  zlib1g-dev                              # gzipped IDX data
  nlohmann-json3-dev                      # JSON for golden scenarios, metrics logs, tools
  dataset-fashion-mnist                   # the trainer's default data, nothing to download
  python3-torch                           # Python interoperability tests (/usr/bin/python3)
  iproute2 util-linux                     # ip netns, unshare (failure tests)
  clang-14 libclang-rt-14-dev             # libFuzzer runs (tools/fuzz/run_libfuzzer.sh)
  slurmctld slurmd slurm-client munge     # a one-machine Slurm for //tests/e2e:slurm_test
)

if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Machine-local Bazel settings: the leak suppressions need an absolute path.
repo=$(cd "$(dirname "$0")/.." && pwd)
printf '%s\n' "# Written by tools/setup.sh; machine-local." \
  "build:asan --test_env=LSAN_OPTIONS=suppressions=$repo/tools/lsan_suppressions.txt:print_suppressions=0" \
  >"$repo/.bazelrc.local"

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
