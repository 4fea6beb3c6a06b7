#!/usr/bin/env bash
# On a development machine (Debian, with its archive reachable): gathers what the GPU build needs
# and a GPU machine cannot download, into third_party/gpu_sources/ (ignored by git; the device
# tool's `carry` takes it along, or copy it with the checkout):
#   abseil_*.orig.tar.gz      Abseil's sources (Debian's abseil source package, the version the
#                             Bazel build links), built there with LibTorch's C++ ABI
#   zlib_*.orig.tar.*         zlib's sources, built there only if the machine has no zlib.h
#   googletest/               GoogleTest's sources (Debian's googletest package, /usr/src)
#   fashion-mnist/            the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist), for
#                             the trainer's --data=mnist:third_party/gpu_sources/fashion-mnist
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
if [[ ! -d $dest/fashion-mnist ]]; then
  [[ -d /usr/share/datasets/fashion-mnist ]] || { echo "no Fashion-MNIST: run tools/setup.sh"; exit 1; }
  mkdir -p "$dest/fashion-mnist"
  cp -L /usr/share/datasets/fashion-mnist/* "$dest/fashion-mnist/"
fi
du -sh "$dest"/* | sed 's/^/  /'
echo "ready: $dest (carry it to the GPU machine with the checkout; then tools/gpu/build.sh there)"
