#!/usr/bin/env bash
# run_examples.sh BUILD_DIR WORK_DIR: builds and runs examples/ring_attention and
# examples/train_loop as separate CMake projects
#   (a) against BUILD_DIR installed into WORK_DIR/prefix (find_package(lctx CONFIG)), after
#       compiling every installed header from the installed tree alone and running the
#       installed lctx-train;
#   (b) against the sources (add_subdirectory via -DLCTX_SOURCE, -DLCTX_CUDA=OFF, only the
#       example's target, unoptimised: it compiles lctx again, twice as fast as -O3; the objects
#       are kept in WORK_DIR between runs).
# ring_attention also runs under `mpirun -np 2` (NCCL with 2 GPUs, a clean skip without).
# Prints the seconds each part took. Env: CMAKE_GENERATOR, CC, CXX, LCTX_MPIEXEC.
set -euo pipefail
mkdir -p "$2"
BUILD="$(cd "$1" && pwd)"
WORK="$(cd "$2" && pwd)"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXAMPLES=(ring_attention train_loop)

# step NAME CMD...: runs CMD with its output in WORK/NAME.log, shown only when it fails.
step() {
  local name="$1"; shift
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    echo "FAILED: $*"; tail -n 60 "$WORK/$name.log"; exit 1
  fi
}
# consumer DIR NAME ARGS...: configures project DIR into WORK/NAME (with ARGS) and builds only
# the target named like DIR.
consumer() {
  local dir="$1" name="$2"; shift 2
  step "$name-configure" cmake -S "$dir" -B "$WORK/$name" "$@"
  step "$name-build" cmake --build "$WORK/$name" -j 2 --target "$(basename "$dir")"
}

# ---- (a) installed package ---------------------------------------------------------------
t0=$SECONDS
rm -rf "$WORK/prefix" "$WORK"/installed-*
step install cmake --install "$BUILD" --prefix "$WORK/prefix"
headers="$WORK/installed-src/all_headers"
mkdir -p "$headers"
(cd "$WORK/prefix/include/lctx" && find . -name '*.h' | sort | sed 's|^\./\(.*\)|#include "\1"|') > "$headers/all_headers.cpp"
cat > "$headers/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(all_headers LANGUAGES C CXX)
find_package(lctx CONFIG REQUIRED)
add_library(all_headers OBJECT all_headers.cpp)
target_link_libraries(all_headers PRIVATE lctx::train)
CMAKE
consumer "$headers" installed-all_headers -DCMAKE_PREFIX_PATH="$WORK/prefix" -DCMAKE_BUILD_TYPE=Release
echo "all $(wc -l < "$headers/all_headers.cpp") installed headers compile from $WORK/prefix/include/lctx alone"
step installed-lctx-train "$WORK/prefix/bin/lctx-train" --print-options
for ex in "${EXAMPLES[@]}"; do
  consumer "$SRC/examples/$ex" "installed-$ex" -DCMAKE_PREFIX_PATH="$WORK/prefix" -DCMAKE_BUILD_TYPE=Release
  "$WORK/installed-$ex/$ex"
done
if [ -n "${LCTX_MPIEXEC:-}" ]; then
  "$LCTX_MPIEXEC" -np 2 --oversubscribe "$WORK/installed-ring_attention/ring_attention"
fi
echo "(a) install + find_package consumers: $((SECONDS - t0)) s"

# ---- (b) add_subdirectory ------------------------------------------------------------------
t0=$SECONDS
for ex in "${EXAMPLES[@]}"; do
  consumer "$SRC/examples/$ex" "subdir-$ex" -DLCTX_SOURCE="$SRC" -DLCTX_CUDA=OFF -DCMAKE_BUILD_TYPE=
  "$WORK/subdir-$ex/$ex"
done
echo "(b) add_subdirectory consumers: $((SECONDS - t0)) s"
