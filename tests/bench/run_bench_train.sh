#!/usr/bin/env bash
# Training throughput of lctx-train next to the same model in PyTorch (bench_train_torch.py) at
# long context on N GPUs: configs/bench-4l-2048.yaml (4 layers, dim 2048, 16 heads of 128, SwiGLU
# 5632, byte vocabulary, bf16, AdamW, every layer recomputed), batch 1. For each N and S:
#   lctx:  N = 1 flash attention; N >= 2 mpirun -np N, ring attention with parallel.sp = N;
#          `steps` steps, the median over the steps after the first (from metrics.jsonl);
#   torch: one warm-up step, then steps - 1 timed steps (torch.distributed.run, context_parallel).
#   lctx-docs: lctx on packed documents (issue 22): --set data.documents=fixed --set
#          data.document_len=L (S/L documents per sequence; masked attention that skips what
#          crosses documents), otherwise as lctx.
# Prints one table: step time, tokens/s per GPU, MFU, peak GiB per GPU and lctx MFU / torch MFU;
# with lctx-docs next to lctx, packed vs unpacked tokens/s per GPU and PASS if packed >= unpacked
# (printed only: the exit status does not depend on it).
# MFU = (6 * non-embedding params * S + 6 * layers * heads * head_dim * S^2) / (step s * 989e12 * N).
#
# Usage: tests/bench/run_bench_train.sh <build dir> [S list=65536,262144,1048576] [N list=1,2]
#                                       [steps=4] [budget s=600]
# The budget holds for each implementation and N: an S whose estimate (the previous S's step
# time scaled by (S / S_prev)^2) does not fit in what is left is skipped, and every run is killed
# at what is left plus a margin. S after an out-of-memory S of the same N is skipped.
# Environment:
#   LCTX_BENCH_SET="key=value ..."  extra lctx-train --set overrides (a CPU smoke test:
#       "train.device=cpu model.dtype=auto model.dim=128 model.n_heads=2 model.n_kv_heads=2 model.ffn_dim=256")
#   LCTX_BENCH_TORCH_ARGS="..."     extra bench_train_torch.py arguments (--backend flash, --rotate alltoall)
#   LCTX_BENCH_IMPLS="lctx torch"   which implementations to run (lctx, lctx-docs, torch); the
#       packed-documents check of issue 22, 64 documents of 4096 at 256k on 2 GPUs:
#       LCTX_BENCH_IMPLS="lctx lctx-docs" tests/bench/run_bench_train.sh build 262144 2 4
#   LCTX_BENCH_DOC_LEN=4096         lctx-docs: data.document_len
#   LCTX_BENCH_CONFIG               the lctx-train config (default configs/bench-4l-2048.yaml)
set -euo pipefail
BUILD="${1:-build}"
SEQS="${2:-65536,262144,1048576}"
NLIST="${3:-1,2}"
STEPS="${4:-4}"
BUDGET="${5:-600}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CONFIG="${LCTX_BENCH_CONFIG:-$ROOT/configs/bench-4l-2048.yaml}"
IMPLS="${LCTX_BENCH_IMPLS:-lctx torch}"
DOC_LEN="${LCTX_BENCH_DOC_LEN:-4096}"
TRAIN="$BUILD/trainers/lctx-train"
export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ "$STEPS" =~ ^[0-9]+$ && "$STEPS" -ge 2 ]] || { echo "steps must be >= 2 (the first is the warm-up)" >&2; exit 2; }
TMP="$(mktemp -d)"
LOG="$TMP/results.log"
touch "$LOG"
echo "run_bench_train: S=$SEQS N=$NLIST steps=$STEPS budget=${BUDGET}s per implementation and N; runs in $TMP"

read -ra EXTRA_SETS <<< "${LCTX_BENCH_SET:-}"
SETS=()
for kv in "${EXTRA_SETS[@]}"; do SETS+=(--set "$kv"); done
read -ra TORCH_ARGS <<< "${LCTX_BENCH_TORCH_ARGS:-}"
IFS=, read -ra SEQ_ARR <<< "$SEQS"
IFS=, read -ra N_ARR <<< "$NLIST"

# Reads a finished run's metrics.jsonl and appends its RESULT (or SKIP) line to the log.
lctx_result() {  # impl N S out_dir rc output_file
  python3 - "$@" <<'PY' | tee -a "$LOG"
import json, os, re, statistics, sys
impl, n, s, out, rc, outfile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
recs = []
path = os.path.join(out, "metrics.jsonl")
if os.path.exists(path):
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("split") == "train" and r.get("tokens_per_s"):
            recs.append(r)
timed = [r for r in recs if r["step"] > 1]  # the first step is the warm-up
if rc != 0 or not timed:
    text = open(outfile, errors="replace").read() if os.path.exists(outfile) else ""
    if rc in (124, 137):
        reason = "timeout"
    elif "out of memory" in text.lower():
        reason = "oom"
    else:
        err = [l for l in text.splitlines() if "error" in l.lower()]
        reason = f"exit-{rc}:" + "_".join((err[-1] if err else "no-timed-steps").split())[:150]
    print(f"SKIP impl={impl} N={n} S={s} reason={reason}", flush=True)
    sys.exit(0)
# tokens_per_s covers one step (logging.every = 1): global tokens / wall time of the step.
step_s = statistics.median(s / r["tokens_per_s"] for r in timed)
mfu = statistics.median(r["mfu"] for r in timed)
peak = max(r["mem_peak_bytes"] for r in recs)
print(f"RESULT impl={impl} N={n} S={s} step_s={step_s:.4f} tok_s_gpu={s / step_s / n:.1f} mfu={mfu:.4f} "
      f"peak_gib={peak / 2**30:.2f}", flush=True)
PY
}

run_lctx() {  # N impl (lctx or lctx-docs)
  local n="$1" impl="$2" start now left est out rc prev_s="" prev_t="" oom=""
  start=$(date +%s)
  for s in "${SEQ_ARR[@]}"; do
    if [[ -n "$oom" ]]; then
      echo "SKIP impl=$impl N=$n S=$s reason=oom-at-S=$oom" | tee -a "$LOG"; continue
    fi
    now=$(date +%s); left=$((BUDGET - (now - start)))
    if [[ -n "$prev_t" ]]; then
      est=$(python3 -c "print(int($STEPS * $prev_t * ($s / $prev_s) ** 2 + 0.5))")
    else
      est=0
    fi
    if (( est > left || left <= 0 )); then
      echo "SKIP impl=$impl N=$n S=$s reason=budget(estimated-${est}s>$((left > 0 ? left : 0))s-left)" | tee -a "$LOG"
      continue
    fi
    out="$TMP/$impl-N$n-S$s"
    local cmd=("$TRAIN" "$CONFIG" --out "$out" --set "data.seq_len=$s" --set "train.steps=$STEPS")
    if [[ "$impl" == lctx-docs ]]; then
      cmd+=(--set data.documents=fixed --set "data.document_len=$DOC_LEN")
    fi
    if (( n > 1 )); then
      cmd=(mpirun -np "$n" --bind-to none -x NCCL_NVLS_ENABLE "${cmd[@]}" --set parallel.simulate=0
           --set "parallel.sp=$n" --set mixer.softmax.sp=ring)
    fi
    cmd+=("${SETS[@]}")
    echo "== $impl N=$n S=$s: ${cmd[*]}"
    rc=0
    timeout -k 20 $((left + 60)) "${cmd[@]}" > "$out.txt" 2>&1 || rc=$?
    grep -E "^(lctx-train|step )" "$out.txt" | tail -n 4 || true
    lctx_result "$impl" "$n" "$s" "$out" "$rc" "$out.txt"
    if tail -n 1 "$LOG" | grep -q "^SKIP.*reason=oom"; then oom="$s"; fi
    if tail -n 1 "$LOG" | grep -q "^RESULT"; then
      prev_s="$s"; prev_t=$(tail -n 1 "$LOG" | sed -E 's/.* step_s=([^ ]+).*/\1/')
    fi
  done
}

run_torch() {  # N
  local n="$1" rc=0 out="$TMP/torch-N$1.txt"
  if ! python3 -c "import torch" 2> /dev/null; then
    for s in "${SEQ_ARR[@]}"; do echo "SKIP impl=torch N=$n S=$s reason=no-torch" | tee -a "$LOG"; done
    return
  fi
  echo "== torch N=$n: bench_train_torch.py $SEQS $((STEPS - 1)) $BUDGET ${TORCH_ARGS[*]}"
  timeout -k 30 $((BUDGET + 180)) python3 -m torch.distributed.run --standalone --nproc_per_node "$n" \
    "$HERE/bench_train_torch.py" "$SEQS" $((STEPS - 1)) "$BUDGET" "${TORCH_ARGS[@]}" > "$out" 2>&1 || rc=$?
  grep -E "^(RESULT|SKIP) " "$out" | tee -a "$LOG" || true
  grep -E "^torch " "$out" || true
  if (( rc != 0 )); then
    echo "torch N=$n exited with $rc; last lines:"; grep -v "^W[0-9]* " "$out" | tail -n 8
  fi
}

for n in "${N_ARR[@]}"; do
  for impl in $IMPLS; do
    case "$impl" in
      lctx | lctx-docs) run_lctx "$n" "$impl" ;;
      torch) run_torch "$n" ;;
      *) echo "unknown implementation '$impl' in LCTX_BENCH_IMPLS" >&2; exit 2 ;;
    esac
  done
done

python3 - "$LOG" "$SEQS" "$NLIST" "$IMPLS" "$DOC_LEN" <<'PY'
import sys
rows, skips = {}, {}
for line in open(sys.argv[1]):
    kind, *kvs = line.split()
    d = dict(kv.split("=", 1) for kv in kvs if "=" in kv)
    key = (d["impl"], int(d["N"]), int(d["S"]))
    if kind == "RESULT":
        rows[key] = {k: float(v) for k, v in d.items() if k not in ("impl", "N", "S")}
    elif kind == "SKIP":
        skips[key] = d.get("reason", "?")
seqs = [int(x) for x in sys.argv[2].split(",") if x]
ns = [int(x) for x in sys.argv[3].split(",") if x]
impls = sys.argv[4].split()
print()
print("Training step, batch 1, configs/bench-4l-2048.yaml (4 x dim 2048, 16 x 128 heads, SwiGLU 5632, bf16, AdamW, "
      "all layers recomputed); median step after warm-up, wall time, max over ranks (lctx: rank 0)")
hdr = f"{'impl':<9} {'N':>2} {'S':>8} | {'step s':>9} {'tok/s/GPU':>10} {'MFU':>6} {'peak GiB':>8} | {'lctx/torch MFU':>14}"
print(hdr)
print("-" * len(hdr))
for n in ns:
    for s in seqs:
        for impl in impls:
            key = (impl, n, s)
            r = rows.get(key)
            if r is None:
                print(f"{impl:<9} {n:>2} {s:>8} | skipped: {skips.get(key, 'no result (crashed or killed)')}")
                continue
            ratio = "-"
            t = rows.get(("torch", n, s))
            if impl == "lctx" and t and t["mfu"] > 0:
                ratio = f"{r['mfu'] / t['mfu']:.2f}"
            print(f"{impl:<9} {n:>2} {s:>8} | {r['step_s']:9.3f} {r['tok_s_gpu']:10.0f} {r['mfu']:6.3f} "
                  f"{r['peak_gib']:8.2f} | {ratio:>14}")
print("lctx/torch MFU > 1: lctx is faster. peak GiB: lctx = its allocator's peak of live tensors and stream-ordered "
      "scratch (rank 0); torch = max_memory_allocated, max over ranks.")
doc_len = int(sys.argv[5])
packed = [(n, s) for n in ns for s in seqs if ("lctx-docs", n, s) in rows]
if packed:
    print(f"\nPacked documents (issue 22): lctx-docs = data.documents=fixed, data.document_len={doc_len} (S/{doc_len} "
          "documents per sequence) vs lctx unpacked; tokens/s per GPU (MFU above: the trainer's own count)")
for n, s in packed:
    p, u = rows[("lctx-docs", n, s)]["tok_s_gpu"], rows.get(("lctx", n, s), {}).get("tok_s_gpu")
    verdict = "no unpacked run" if u is None else f"{p / u:.2f}x: {'PASS' if p >= u else 'FAIL'} (packed >= unpacked)"
    print(f"  N={n} S={s}, {s // doc_len} documents: packed {p:.0f}, unpacked "
          f"{'-' if u is None else f'{u:.0f}'}: {verdict}")
PY
