#!/usr/bin/env bash
# On a development machine (Debian, with its archive reachable): gathers what the GPU build needs
# and a GPU machine cannot download, into third_party/gpu_sources/ (ignored by git; the device
# tool's `carry` takes it along, or copy it with the checkout):
#   abseil_*.orig.tar.gz      Abseil's sources (Debian's abseil source package, the version the
#                             Bazel build links), built there with LibTorch's C++ ABI
#   zlib_*.orig.tar.*         zlib's sources, built there only if the machine has no zlib.h
#   googletest/               GoogleTest's sources (Debian's googletest package, /usr/src)
#   include/nlohmann/         nlohmann/json's headers (Debian's nlohmann-json3-dev, MIT; PyTorch
#                             wheels do not ship them): handlers/metrics_log.h, tools/train.cc and
#                             tools/ledger.cc include <nlohmann/json.hpp>
#   fashion-mnist/            the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist), for
#                             the trainer's --data=mnist:third_party/gpu_sources/fashion-mnist
#   prebuilt/                 torch-free binaries built here, for the GPU checks that need no
#                             build there: nccl_smoke_test (NCCL from /usr/local/cuda, CUDA's
#                             runtime linked statically) and torchrun_rendezvous; Abseil,
#                             GoogleTest, libgcc and libstdc++'s own code linked statically
#   cpu_checkpoint/           a checkpoint the trainer writes here on CPU (--data=synthetic, one
#                             epoch), which the GPU machine's PyTorch loads with weights_only=True
#   tools/gpu/fetch_sources.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=third_party/gpu_sources
mkdir -p "$dest"
work=$(mktemp -d /tmp/ember-gpu-sources.XXXXXX)
trap 'rm -rf "$work"' EXIT

if ! ls "$dest"/abseil_*.orig.tar.gz "$dest"/zlib_*.orig.tar.* >/dev/null 2>&1; then
  echo "fetching Abseil's and zlib's source packages from Debian's archive"
  mkdir -p "$work/lists/partial"
  echo "deb-src http://deb.debian.org/debian bookworm main" >"$work/sources.list"
  apt_opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$work/lists" -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 || { cat "$work/update.log"; exit 1; }
  (cd "$work" && apt-get "${apt_opts[@]}" source --download-only \
    "abseil=$(dpkg-query -W -f='${source:Version}' libabsl-dev)" "zlib=$(dpkg-query -W -f='${source:Version}' zlib1g)") \
    >"$work/source.log" 2>&1 || { cat "$work/source.log"; exit 1; }
  cp "$work"/abseil_*.orig.tar.gz "$work"/zlib_*.orig.tar.* "$dest/"
fi
if [[ ! -d $dest/googletest ]]; then
  [[ -d /usr/src/googletest ]] || { echo "no /usr/src/googletest: run tools/setup.sh (it installs googletest)"; exit 1; }
  cp -r /usr/src/googletest "$dest/googletest"
fi
if [[ ! -f $dest/include/nlohmann/json.hpp ]]; then
  [[ -f /usr/include/nlohmann/json.hpp ]] || { echo "no /usr/include/nlohmann/json.hpp: run tools/setup.sh (nlohmann-json3-dev)"; exit 1; }
  mkdir -p "$dest/include"
  cp -r /usr/include/nlohmann "$dest/include/nlohmann"
  cp /usr/share/doc/nlohmann-json3-dev/copyright "$dest/include/nlohmann/COPYRIGHT.debian"
fi
if [[ ! -d $dest/fashion-mnist ]]; then
  [[ -d /usr/share/datasets/fashion-mnist ]] || { echo "no Fashion-MNIST: run tools/setup.sh"; exit 1; }
  mkdir -p "$dest/fashion-mnist"
  cp -L /usr/share/datasets/fashion-mnist/* "$dest/fashion-mnist/"
fi
if [[ ! -x $dest/prebuilt/torchrun_rendezvous || ! -x $dest/prebuilt/nccl_smoke_test ]]; then
  echo "building the torch-free binaries into $dest/prebuilt"
  mkdir -p "$dest/prebuilt"
  absl=$(pkg-config --static --libs absl_status absl_statusor absl_strings absl_str_format absl_time \
         absl_synchronization) || { echo "no Abseil pkg-config files: run tools/setup.sh"; exit 1; }
  static=(-static-libstdc++ -static-libgcc -pthread)
  g++ -std=c++20 -O2 -I. tests/distributed/torchrun_rendezvous_main.cc distributed/launcher_env.cc \
    distributed/tcp_rendezvous.cc -o "$work/torchrun_rendezvous" "${static[@]}" -Wl,-Bstatic $absl -Wl,-Bdynamic
  cuda=${CUDA_HOME:-/usr/local/cuda}
  [[ -f $cuda/include/nccl.h && -f $cuda/lib64/libcudart_static.a ]] ||
    { echo "no nccl.h or libcudart_static.a under $cuda (set CUDA_HOME)"; exit 1; }
  g++ -std=c++20 -O2 -DEMBER_HAVE_NCCL -I. -isystem "$cuda/include" tests/third_party/nccl_smoke_test.cc \
    -o "$work/nccl_smoke_test" "${static[@]}" -Wl,-Bstatic -lgtest_main -lgtest -Wl,-Bdynamic \
    -L"$cuda/lib64" -lcudart_static -lnccl -ldl -lrt
  cp "$work/torchrun_rendezvous" "$work/nccl_smoke_test" "$dest/prebuilt/"
fi
if ! ls "$dest"/cpu_checkpoint/*.pt >/dev/null 2>&1; then
  echo "writing a CPU checkpoint into $dest/cpu_checkpoint (the trainer, --data=synthetic, 1 epoch)"
  bazel build //tools:train >"$work/bazel.log" 2>&1 || { tail -n 20 "$work/bazel.log"; exit 1; }
  rm -rf "$dest/cpu_checkpoint"
  bazel-bin/tools/train --data=synthetic --epochs=1 --progress=none --backend=single \
    --output_dir="$dest/cpu_checkpoint" >"$work/train.log" 2>&1 || { tail -n 20 "$work/train.log"; exit 1; }
  ls "$dest"/cpu_checkpoint/*.pt >/dev/null 2>&1 || { echo "the trainer wrote no checkpoint"; exit 1; }
fi
du -sh "$dest"/* | sed 's/^/  /'
echo "ready: $dest (carry it to the GPU machine with the checkout; then tools/gpu/build.sh there)"
