#!/usr/bin/env bash
# Shared by run.sh and test.sh: installs missing build dependencies (Debian 12 / Ubuntu 24.04,
# as root, via apt) and configures + builds lctx into build/ (Ninja when present).
# Idempotent: with everything installed and built it only runs an incremental build.
# LCTX_BUILD_TARGET (optional) builds one target instead of all (run.sh: lctx-train).
set -euo pipefail

LCTX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${LCTX_BUILD_DIR:-$LCTX_ROOT/build}"

have_header() {  # have_header <relative path> : found in a standard include directory?
  local d
  for d in /usr/include /usr/local/include /usr/include/hdf5/serial /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu; do
    [ -e "$d/$1" ] && return 0
  done
  return 1
}

lctx_install_deps() {
  local missing=()
  command -v g++ >/dev/null || missing+=(g++)
  command -v cmake >/dev/null || missing+=(cmake)
  command -v ninja >/dev/null || missing+=(ninja-build)
  command -v mpirun >/dev/null || missing+=(openmpi-bin)
  have_header mpi.h || have_header openmpi/mpi.h || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
    || [ -e /usr/lib/aarch64-linux-gnu/openmpi/include/mpi.h ] || missing+=(libopenmpi-dev)
  have_header hdf5.h || missing+=(libhdf5-dev)
  command -v h5dump >/dev/null || missing+=(hdf5-tools)
  have_header yaml-cpp/yaml.h || missing+=(libyaml-cpp-dev)
  have_header gtest/gtest.h || missing+=(libgtest-dev)
  have_header benchmark/benchmark.h || missing+=(libbenchmark-dev)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import matplotlib' 2>/dev/null || /usr/bin/python3 -c 'import matplotlib' 2>/dev/null \
    || missing+=(python3-matplotlib)
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  echo "lctx: installing missing packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "lctx: cannot install (need root and apt-get); please install: ${missing[*]}" >&2
    return 0  # configuring will say precisely what is missing
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "lctx: apt-get update failed (offline?)" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "lctx: apt-get install failed for some of: ${missing[*]}" >&2
}

lctx_build() {
  local gen=() target=()
  [ -n "${LCTX_BUILD_TARGET:-}" ] && target=(--target "$LCTX_BUILD_TARGET")
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$LCTX_ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release ${LCTX_CMAKE_ARGS:-}
  fi
  cmake --build "$BUILD_DIR" -j "$(nproc)" "${target[@]}"
}

lctx_install_deps
lctx_build
