#!/usr/bin/env bash
# Multi-process training with MPI: one rank per GPU (or NP CPU ranks), each running
# build/trainers/lctx-train with parallel.simulate forced to 0 (real ranks).
#   bash launch/mpirun.sh configs/gpu-2-ring.yaml             # NP = number of GPUs
#   LCTX_NP=2 bash launch/mpirun.sh configs/quickstart.yaml --set parallel.dp=2 --set parallel.sp=1
# NCCL_NVLS_ENABLE defaults to 0 (NVLink SHARP multicast off) and is exported to every rank.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: bash launch/mpirun.sh CONFIG.yaml [lctx-train args...]" >&2; exit 2; }
CONFIG="$1"
shift
LCTX_BUILD_TARGET=lctx-train
source "$ROOT/launch/setup.sh"
if [ -z "${LCTX_NP:-}" ]; then
  LCTX_NP=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${LCTX_NP:-0}" -gt 0 ] || LCTX_NP=2
fi
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / LCTX_NP > 0 ? $(nproc) / LCTX_NP : 1 ))}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NAME="$(basename "${CONFIG%.*}")"
OUT="${LCTX_RUN_DIR:-$ROOT/runs/$NAME-np$LCTX_NP}"
cd "$ROOT"
mpirun -np "$LCTX_NP" --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS \
  "$BUILD_DIR/trainers/lctx-train" "$CONFIG" --out "$OUT" --set parallel.simulate=0 "$@"
bash "$ROOT/launch/plot.sh" "$OUT/metrics.jsonl"
