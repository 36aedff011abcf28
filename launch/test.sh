#!/usr/bin/env bash
# One command: install what is missing, build, and run every test (ctest). GPU tests skip
# cleanly without a GPU. Extra arguments go to ctest (e.g. `-L gpu`, `-R flash`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/setup.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"
