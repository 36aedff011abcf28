#!/usr/bin/env bash
# The 2-GPU training runs of issues 17 (linear attention), 18 (Mamba) and 20 (nsa), in one call
# on a machine of 2 GPUs (nvidia-h200-x2):
#  1. scaling: each model on 1 GPU at S/2 tokens per sequence and on 2 GPUs (mpirun, ring sp 2,
#     zigzag) at S tokens, the same tokens per GPU; SP efficiency = tokens/s on 2 GPUs /
#     (2 x tokens/s on 1 GPU) (weak scaling: exact for linear-time mixers, whose cost per token
#     does not grow with S). Models: linear, mamba, hybrid (softmax + 3 mamba), nsa (4 layers).
#  2. long: linear and mamba at 4 S tokens per sequence on 2 GPUs (dim 512).
# Each run: `steps` steps of a 4-layer LM (dim 1024 by default, every layer recomputed, bf16),
# median tokens/s over steps 2.. (the first is the warm-up), peak memory of rank 0's GPU, and the
# bytes rank 0 hands to its sequence-parallel groups per step (metrics.jsonl's sp_bytes) and
# per layer.
# Usage: tests/bench/run_sp_families.sh <build dir> [S=1048576] [steps=6]
# Environment:
#   LCTX_SP_PARTS="scaling long"   which parts to run
#   LCTX_SP_MODELS="linear mamba hybrid nsa"
#   LCTX_SP_SET="k=v ..."          extra lctx-train --set overrides for every run (a CPU dry run:
#                                  "train.device=cpu model.dtype=auto model.dim=64 ...")
set -euo pipefail
BUILD="${1:-build}"
S="${2:-1048576}"
STEPS="${3:-6}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PARTS="${LCTX_SP_PARTS:-scaling long}"
MODELS="${LCTX_SP_MODELS:-linear mamba hybrid nsa}"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
want() { [[ " $PARTS " == *" $1 "* ]]; }
WORK="$(mktemp -d)"

mixers_of() {  # the model.mixers and mixer options of a named model
  case "$1" in
    linear) echo "model.mixers=linear mixer.linear.decay=fixed" ;;
    mamba) echo "model.mixers=mamba" ;;
    hybrid) echo "model.mixers=[softmax,mamba,mamba,mamba]" ;;
    nsa) echo "model.mixers=nsa mixer.nsa.window=512 mixer.nsa.compress_block=32 mixer.nsa.select_block=64 mixer.nsa.top_n=16" ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

# run <name> <ranks> <tokens>: one lctx-train run; prints "tokens/s peak_GiB sp_bytes" (medians).
run() {
  local name="$1" np="$2" T="$3" out="$WORK/$1-$2-$3"
  local sets=(--set parallel.simulate=0 --set "parallel.sp=$np" --set "data.seq_len=$T" --set "train.steps=$STEPS")
  local kv
  # The long runs hold 2 S tokens per GPU: dim 512 (about 42 KB of activations per token for
  # linear, 64 KB for mamba, scaled from bench-4l-2048's 166 / 254 KB at dim 2048).
  [ -n "${LONG:-}" ] && for kv in model.dim=512 model.n_heads=4 model.n_kv_heads=4 model.ffn_dim=1408; do sets+=(--set "$kv"); done
  for kv in $(mixers_of "$name") ${LCTX_SP_SET:-}; do sets+=(--set "$kv"); done
  local cmd=("$BUILD/trainers/lctx-train" "$ROOT/configs/sp-families.yaml" --out "$out" "${sets[@]}")
  if [ "$np" -gt 1 ]; then cmd=(mpirun -np "$np" --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE "${cmd[@]}"); fi
  if ! "${cmd[@]}" > "$out.txt" 2>&1; then
    echo "$name on $np rank(s) at $T tokens failed:" >&2
    tail -n 8 "$out.txt" >&2
    echo "nan nan nan"
    return
  fi
  python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
later = [r for r in recs if r["step"] > 1] or recs
med = lambda xs: sorted(xs)[len(xs) // 2]
print(med([r["tokens_per_s"] for r in later]), max(r["mem_peak_bytes"] for r in recs) / 2**30,
      med([r["sp_bytes"] for r in later]))
PY
}

if want scaling; then
  echo "== scaling: 1 GPU at $((S / 2)) tokens vs 2 GPUs at $S tokens, $STEPS steps"
  printf '%-8s %12s %12s %6s %9s %9s %12s %12s\n' model "1 GPU tok/s" "2 GPU tok/s" eff "GiB 1" "GiB 2" "sp MiB/step" "MiB/layer"
  for m in $MODELS; do
    read -r t1 g1 _ <<< "$(run "$m" 1 $((S / 2)))"
    read -r t2 g2 b2 <<< "$(run "$m" 2 "$S")"
    python3 -c "
import math, sys
m, t1, t2, g1, g2, b = sys.argv[1], *map(float, sys.argv[2:])
eff = t2 / (2 * t1) if t1 > 0 else math.nan
print(f'{m:<8} {t1:12.0f} {t2:12.0f} {eff:6.3f} {g1:9.1f} {g2:9.1f} {b / 2**20:12.1f} {b / 2**20 / 4:12.1f}')" \
      "$m" "$t1" "$t2" "$g1" "$g2" "$b2"
  done
fi

if want long; then
  echo "== long: 2 GPUs at $((4 * S)) tokens, $STEPS steps"
  printf '%-8s %12s %9s %12s\n' model "tok/s" "GiB" "sp MiB/step"
  for m in linear mamba; do
    read -r t g b <<< "$(LONG=1 run "$m" 2 $((4 * S)))"
    python3 -c "
import sys
m, t, g, b = sys.argv[1], *map(float, sys.argv[2:])
print(f'{m:<8} {t:12.0f} {g:9.1f} {b / 2**20:12.1f}')" "$m" "$t" "$g" "$b"
  done
fi
rm -rf "$WORK"
