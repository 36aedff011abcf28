#!/usr/bin/env bash
# The scaling runs on one node of N GPUs (4 or 8), in one call:
#  1. ring: bench_ring at N in every mode (zigzag ring, contiguous ring, Ulysses, hybrid) next to
#     PyTorch context_parallel with its cuDNN backend (run_bench_ring.sh; T1 is one GPU on the
#     whole sequence, so the largest S must fit one GPU);
#  2. train: lctx-train on a config (default configs/ctx-1m.yaml, 1M tokens) over the N GPUs for
#     `steps` steps ending in a checkpoint, then a second run that resumes from it for 2 more
#     steps; prints the last logged step of each (tokens/s, MFU, peak memory) and checks that the
#     second run resumed at step `steps`.
# Usage: tests/bench/run_scaling.sh <build dir> [N=8] [S list=524288,1048576] [steps=20]
# Environment:
#   LCTX_SCALING_PARTS="ring train"  which parts to run
#   LCTX_SCALING_CONFIG              the training config (default configs/ctx-1m.yaml)
#   LCTX_SCALING_SET="k=v ..."       extra lctx-train --set overrides
#   LCTX_BENCH_ROUNDS                passed to run_bench_ring.sh (lctx/PyTorch alternations)
set -euo pipefail
BUILD="${1:-build}"
N="${2:-8}"
SEQS="${3:-524288,1048576}"
STEPS="${4:-20}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PARTS="${LCTX_SCALING_PARTS:-ring train}"
CONFIG="${LCTX_SCALING_CONFIG:-$ROOT/configs/ctx-1m.yaml}"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
want() { [[ " $PARTS " == *" $1 "* ]]; }

if want ring; then
  echo "== ring: N=$N S=$SEQS, modes zigzag,ring,ulysses,hybrid, PyTorch context_parallel (cuDNN)"
  LCTX_BENCH_RING_MODES=zigzag,ring,ulysses,hybrid LCTX_BENCH_TORCH_BACKENDS=cudnn \
    bash "$HERE/run_bench_ring.sh" "$BUILD" "$N" "$SEQS" 1 540
fi

if want train; then
  OUT="$(mktemp -d)/run"
  read -ra EXTRA <<< "${LCTX_SCALING_SET:-}"
  SETS=(--set parallel.simulate=0 --set "parallel.sp=$N" --set logging.every=1 --set eval.batches=0)
  for kv in "${EXTRA[@]}"; do SETS+=(--set "$kv"); done
  launch() {  # steps, then lctx-train arguments
    local steps="$1"
    shift
    mpirun -np "$N" --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE "$BUILD/trainers/lctx-train" "$CONFIG" \
      --out "$OUT" "${SETS[@]}" --set "train.steps=$steps" --set "checkpoint.every=$STEPS" "$@"
  }
  echo "== train: $(basename "$CONFIG") on $N ranks, $STEPS steps and a checkpoint"
  launch "$STEPS" > "$OUT.first.txt" 2>&1 || { tail -n 20 "$OUT.first.txt"; exit 1; }
  grep -E "^lctx-train:" "$OUT.first.txt" | head -n 2
  grep -E "^step " "$OUT.first.txt" | tail -n 1
  ls "$OUT/checkpoints"
  echo "== train: resume for 2 more steps"
  launch $((STEPS + 2)) --set checkpoint.resume=auto > "$OUT.resume.txt" 2>&1 || { tail -n 20 "$OUT.resume.txt"; exit 1; }
  grep -E "^lctx-train: resumed" "$OUT.resume.txt" || { echo "the second run did not resume"; exit 1; }
  grep -q "at step $STEPS\$" "$OUT.resume.txt" || { echo "the second run did not resume at step $STEPS"; exit 1; }
  grep -E "^step " "$OUT.resume.txt" | tail -n 1
  python3 - "$OUT/metrics.jsonl" "$STEPS" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
steps = int(sys.argv[2])
first = [r for r in recs if 1 < r["step"] <= steps]  # the first step is the warm-up
tok = sorted(r["tokens_per_s"] for r in first)
mfu = sorted(r["mfu"] for r in first)
peak = max(r["mem_peak_bytes"] for r in recs)
print(f"train: median over steps 2..{steps}: {tok[len(tok) // 2]:.0f} tokens/s in total, MFU {mfu[len(mfu) // 2]:.3f}; "
      f"peak {peak / 2**30:.1f} GiB (rank 0); resumed run logged steps {[r['step'] for r in recs if r['step'] > steps]}")
PY
fi
