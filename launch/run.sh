#!/usr/bin/env bash
# One command: install what is missing, build lctx-train, train a config (default:
# configs/quickstart.yaml) into runs/<config name>/, then plot the loss curve beside the metrics.
#   bash launch/run.sh                                  # the quickstart (CPU, 4 simulated ranks)
#   bash launch/run.sh --resume                         # continue from the newest valid checkpoint
#   bash launch/run.sh configs/gpu-1.yaml --set train.steps=2000
# Arguments after the optional config go to lctx-train (--resume, --out DIR, --set key=value).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$ROOT/configs/quickstart.yaml"
if [ $# -gt 0 ] && [[ "$1" == *.yaml || "$1" == *.yml ]]; then
  CONFIG="$1"
  shift
fi
LCTX_BUILD_TARGET=lctx-train
source "$ROOT/launch/setup.sh"
NAME="$(basename "${CONFIG%.*}")"
OUT="${LCTX_RUN_DIR:-$ROOT/runs/$NAME}"
cd "$ROOT"
start=$(date +%s)
"$BUILD_DIR/trainers/lctx-train" "$CONFIG" --out "$OUT" "$@"
echo "lctx: training took $(( $(date +%s) - start )) s; metrics in $OUT/metrics.jsonl"
bash "$ROOT/launch/plot.sh" "$OUT/metrics.jsonl"
