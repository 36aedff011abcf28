#!/usr/bin/env bash
# Training equivalence of sequence parallelism: the same lctx-train run (same seed, data and
# config) on one GPU with flash attention and on N GPUs with ring attention (mpirun, NCCL, sp=N)
# must give the same loss curve up to bf16 rounding. Prints, per logged step, both losses, and
# the largest differences; exits 1 when a step differs by more than TOL_ABS + TOL_REL * loss.
# Usage: tests/bench/run_loss_curves.sh <build dir> [N=2] [steps=200] [S=65536]
# Environment:
#   LCTX_CURVE_CONFIG   config (default configs/bench-4l-2048.yaml)
#   LCTX_CURVE_SET      extra --set overrides, space separated (default: a learnable task,
#                       "data.source=mqar"; for a CPU smoke test add "train.device=cpu ...")
#   LCTX_CURVE_RUN1 / LCTX_CURVE_RUNN   launcher prefixes (default: none / mpirun -np N)
#   TOL_ABS=0.02 TOL_REL=0.02
set -euo pipefail
BUILD="${1:-build}"
N="${2:-2}"
STEPS="${3:-200}"
S="${4:-65536}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="${LCTX_CURVE_CONFIG:-$HERE/../../configs/bench-4l-2048.yaml}"
read -ra EXTRA <<< "${LCTX_CURVE_SET:-data.source=mqar}"
SETS=(--set "train.steps=$STEPS" --set "data.seq_len=$S" --set logging.every=1)
for kv in "${EXTRA[@]}"; do SETS+=(--set "$kv"); done
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP="$(mktemp -d)"
read -ra RUN1 <<< "${LCTX_CURVE_RUN1:-}"
read -ra RUNN <<< "${LCTX_CURVE_RUNN:-mpirun -np $N --bind-to none -x NCCL_NVLS_ENABLE}"
echo "== 1 rank, flash"
"${RUN1[@]}" "$BUILD/trainers/lctx-train" "$CONFIG" --out "$TMP/one" "${SETS[@]}" --set mixer.softmax.sp=auto \
  > "$TMP/one.txt" 2>&1 || { tail -n 20 "$TMP/one.txt"; exit 2; }
echo "== $N ranks, ring"
"${RUNN[@]}" "$BUILD/trainers/lctx-train" "$CONFIG" --out "$TMP/ring" "${SETS[@]}" --set mixer.softmax.sp=ring \
  --set "parallel.sp=$N" > "$TMP/ring.txt" 2>&1 || { tail -n 20 "$TMP/ring.txt"; exit 2; }
python3 - "$TMP/one/metrics.jsonl" "$TMP/ring/metrics.jsonl" "${TOL_ABS:-0.02}" "${TOL_REL:-0.02}" "$N" <<'PY'
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("split") == "train":
            out[r["step"]] = r["loss"]
    return out
one, ring = losses(sys.argv[1]), losses(sys.argv[2])
tol_abs, tol_rel, n = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
steps = sorted(set(one) & set(ring))
if not steps or len(steps) != len(one):
    sys.exit(f"the runs logged different steps: {len(one)} vs {len(ring)}")
worst, bad = (0.0, 0), []
print(f"{'step':>6} {'1 rank':>9} {n + ' ranks':>9} {'diff':>9}")
for s in steps:
    d = abs(one[s] - ring[s])
    if d > worst[0]:
        worst = (d, s)
    if d > tol_abs + tol_rel * abs(one[s]):
        bad.append(s)
    if s <= 5 or s % 20 == 0 or s == steps[-1]:
        print(f"{s:>6} {one[s]:9.4f} {ring[s]:9.4f} {d:9.4f}")
print(f"largest difference {worst[0]:.4f} at step {worst[1]}; tolerance {tol_abs} + {tol_rel} x loss; "
      f"{len(bad)} of {len(steps)} steps outside")
sys.exit(1 if bad else 0)
PY
