#!/usr/bin/env bash
# On a GPU machine without Bazel or Debian packages (CUDA, a Python PyTorch 2.x, CMake; ninja if
# present): builds, with tools/gpu/CMakeLists.txt, what the GPU checks run (train,
# nccl_communicator_test, nccl_smoke_test, data_parallel_gpu_test, torchrun_rendezvous, ckpt) into BUILD_DIR (default build-gpu):
#   tools/gpu/build.sh [BUILD_DIR]
# Needs third_party/gpu_sources/ from tools/gpu/fetch_sources.sh (run on a development machine,
# carried along). Finds, each overridable by its variable:
#   LIBTORCH_HOME  LibTorch: the torch folder of $PYTHON's PyTorch (python3 by default)
#   the ABI        torch._C._GLIBCXX_USE_CXX11_ABI, else LibTorch's TorchConfig.cmake
#   CUDA_HOME      /usr/local/cuda
#   NCCL_HOME      PyTorch's own NCCL (the nvidia/nccl package beside torch), else CUDA_HOME
# Abseil and GoogleTest are built from the carried sources with LibTorch's ABI (and zlib, when the
# machine has no zlib.h). A missing CUDA runtime or NCCL is an error (EMBER_REQUIRE_NCCL=OFF builds
# without the NCCL backend instead). EMBER_CMAKE_ARGS adds arguments to CMake's configure step.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=$(realpath -m "${1:-build-gpu}")
src=third_party/gpu_sources
py=${PYTHON:-python3}
fail() { echo "tools/gpu/build.sh: $*" >&2; exit 1; }
[[ -d $src/googletest ]] && ls "$src"/abseil_*.orig.tar.gz >/dev/null 2>&1 ||
  fail "no $src/abseil_*.orig.tar.gz or $src/googletest: run tools/gpu/fetch_sources.sh on a development machine and carry $src here"
command -v cmake >/dev/null || fail "no cmake on PATH"

torch_home=${LIBTORCH_HOME:-$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null || true)}
[[ -n $torch_home ]] || fail "no LibTorch: set LIBTORCH_HOME, or install PyTorch for $py (or set PYTHON)"
abi=${EMBER_CXX11_ABI:-$("$py" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || true)}
if [[ -z $abi ]]; then
  config=$(ls "$torch_home"/share/cmake/Torch/TorchConfig.cmake 2>/dev/null || true)
  abi=$(sed -n 's/.*_GLIBCXX_USE_CXX11_ABI=\([01]\).*/\1/p' ${config:-/dev/null} | head -n 1)
  abi=${abi:-1}
fi
cuda_home=${CUDA_HOME:-/usr/local/cuda}
nccl_home=${NCCL_HOME:-$("$py" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)}
nccl_home=${nccl_home:-$cuda_home}
echo "LibTorch: $torch_home (C++11 ABI: $abi); CUDA: $cuda_home; NCCL: $nccl_home"

mkdir -p "$build/src"
absl_tar=$(ls "$src"/abseil_*.orig.tar.gz | head -n 1)
if [[ ! -f $build/src/abseil/CMakeLists.txt ]]; then
  rm -rf "$build/src/abseil" && mkdir -p "$build/src/abseil"
  tar -xzf "$absl_tar" -C "$build/src/abseil" --strip-components=1
fi
zlib_tar=$(ls "$src"/zlib_*.orig.tar.* 2>/dev/null | head -n 1 || true)
if [[ -n $zlib_tar && ! -f $build/src/zlib/CMakeLists.txt ]]; then
  rm -rf "$build/src/zlib" && mkdir -p "$build/src/zlib"
  tar -xf "$zlib_tar" -C "$build/src/zlib" --strip-components=1
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S tools/gpu -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DTORCH_HOME="$torch_home" -DEMBER_CXX11_ABI="$abi" \
  -DABSL_SOURCE_DIR="$build/src/abseil" -DGTEST_SOURCE_DIR="$root/$src/googletest" \
  -DZLIB_SOURCE_DIR="${zlib_tar:+$build/src/zlib}" \
  -DCUDA_HOME="$cuda_home" -DNCCL_HOME="$nccl_home" -DEMBER_REQUIRE_NCCL="${EMBER_REQUIRE_NCCL:-ON}" \
  ${EMBER_CMAKE_ARGS:-}
cmake --build "$build" -j "$(nproc)"
echo "built: $(cd "$build" && ls -1 train ckpt nccl_communicator_test nccl_smoke_test data_parallel_gpu_test torchrun_rendezvous | sed "s|^|$build/|" | tr '\n' ' ')"
