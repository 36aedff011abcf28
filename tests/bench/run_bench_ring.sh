#!/usr/bin/env bash
# Runs bench_ring (lctx ring attention over NCCL, mpirun -np N) and bench_ring_torch.py
# (PyTorch context_parallel, torch.distributed.run) on the same GPUs and prints one table:
# per sequence length, 1-GPU and N-GPU times, scaling efficiency t1 / (N * tn), fraction of
# communication hidden (lctx: 1 - (tn - tn_without_comm) / comm_alone) and the ratios; then
# packed documents: lctx causal inside D equal documents of S/D against plain causal (PyTorch's
# context_parallel has no document mask: not run).
# Usage: tests/bench/run_bench_ring.sh <build dir> [N=2] [S list=131072,524288] [reps=3] [budget s=240]
# LCTX_BENCH_TORCH_BACKENDS: PyTorch SDPA backends under context_parallel (default cudnn,flash).
# LCTX_BENCH_RING_MODES: lctx's modes (default zigzag; also ring, ulysses, hybrid: see bench_ring.cpp).
# LCTX_BENCH_RING_DOCS: documents per sequence of the packed-document runs (default 64; 0: none).
# LCTX_BENCH_RING_WINDOW: also a causal sliding window of this many keys (issue 19): the ring
#   against the same layers without communication, and the MB a rank sends (default 0: not run).
# LCTX_BENCH_ROUNDS: run lctx and PyTorch alternately this many times (default 1) and report the
#   median of each figure over the rounds (GPU clocks drift by a few % between runs).
set -euo pipefail
BUILD="${1:-build}"
N="${2:-2}"
SEQS="${3:-131072,524288}"
REPS="${4:-3}"
BUDGET="${5:-240}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LOG="$(mktemp)"
ROUNDS="${LCTX_BENCH_ROUNDS:-1}"
: > "$LOG"
for ((round = 1; round <= ROUNDS; ++round)); do
  (( ROUNDS > 1 )) && echo "== round $round of $ROUNDS"
  mpirun -np "$N" --oversubscribe -x NCCL_NVLS_ENABLE -x LCTX_BENCH_RING_WINDOW "$BUILD/tests/bench/bench_ring" "$SEQS" "$REPS" "$BUDGET" \
    "${LCTX_BENCH_RING_MODES:-zigzag}" "${LCTX_BENCH_RING_DOCS:-64}" 2>&1 \
    | tee -a "$LOG" || true
  python3 -m torch.distributed.run --standalone --nproc_per_node "$N" "$HERE/bench_ring_torch.py" "$SEQS" "$REPS" \
    "$BUDGET" allgather "${LCTX_BENCH_TORCH_BACKENDS:-cudnn,flash}" 2>&1 \
    | grep -v "^W[0-9]* " | tee -a "$LOG" || true
done
python3 - "$LOG" <<'PY'
import statistics, sys
runs = {}  # (impl, S) -> the RESULT of every round
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        d = dict(kv.split("=", 1) for kv in line.split()[1:])
        r = {k: (v if k == "impl" else float(v)) for k, v in d.items()}
        runs.setdefault((r["impl"], r["S"]), []).append(r)
if not runs:
    sys.exit("no RESULT lines")
# The median of each figure over the rounds (every field of a round's line is one measurement).
rows = [{k: (rs[0][k] if k == "impl" else statistics.median(r[k] for r in rs)) for k in rs[0]}
        for rs in runs.values()]
doc_rows = [r for r in rows if r.get("docs", 0) > 0]
win_rows = [r for r in rows if r.get("window", 0) > 0]
rows = [r for r in rows if r.get("docs", 0) == 0 and r.get("window", 0) == 0]
n_rounds = max(len(rs) for rs in runs.values())
H, D = 16, 128
def tflops(r, key):  # per GPU, forward+backward = 3.5 x causal forward (FlashAttention convention)
    n = r["N"] if key.startswith("tn") else 1
    return 3.5 * 2 * r["S"] ** 2 * H * D / (r[key] * 1e-3) / n / 1e12
lctx = {r["S"]: r for r in rows if r["impl"] == "lctx"}
print()
print("causal bf16 B=1 H=16 D=128; times in ms (wall, max over ranks); eff = t1 / (N * tN); "
      "hidden = share of the exchange time overlapped by compute"
      + (f"; median of {n_rounds} rounds" if n_rounds > 1 else ""))
hdr = (f"{'impl':<20} {'S':>7} {'N':>2} | {'t1 fwd':>8} {'tN fwd':>8} {'eff':>5} {'hidden':>6} | "
       f"{'t1 f+b':>9} {'tN f+b':>9} {'eff':>5} {'hidden':>6} {'TF/s/GPU':>8} | {'lctx x':>6}")
print(hdr)
print("-" * len(hdr))
for r in sorted(rows, key=lambda r: (r["S"], not r["impl"].startswith("lctx"), r["impl"])):
    n = r["N"]
    eff_f, eff_b = r["t1_fwd"] / (n * r["tn_fwd"]), r["t1_fb"] / (n * r["tn_fb"])
    hid_f = hid_b = "   -"
    if "comm_fwd" in r:
        hid = lambda tn, nc, c: f"{max(0.0, min(1.0, 1 - (tn - nc) / c)):6.2f}" if c > 0 else "   -"
        hid_f = hid(r["tn_fwd"], r["nocomm_fwd"], r["comm_fwd"])
        hid_b = hid(r["tn_fb"], r["nocomm_fb"], r["comm_fb"])
    l = lctx.get(r["S"])
    ratio = f"{r['tn_fb'] / l['tn_fb']:6.2f}" if l else "     -"
    print(f"{r['impl']:<20} {int(r['S']):>7} {int(n):>2} | {r['t1_fwd']:8.1f} {r['tn_fwd']:8.1f} {eff_f:5.2f} {hid_f:>6} | "
          f"{r['t1_fb']:9.1f} {r['tn_fb']:9.1f} {eff_b:5.2f} {hid_b:>6} {tflops(r, 'tn_fb'):8.1f} | {ratio}")
print("lctx x = (this implementation's N-GPU fwd+bwd time) / (lctx's): > 1 means lctx is faster")
for r in sorted((r for r in rows + doc_rows if "nocomm_fb" in r), key=lambda r: (r["S"], r["impl"])):
    alone = f"; exchanges alone fwd {r['comm_fwd']:.1f} ms, f+b {r['comm_fb']:.1f} ms" if r["comm_fb"] > 0 else ""
    extra = 100 * (r["tn_fb"] / r["nocomm_fb"] - 1)
    print(f"{r['impl']} S={int(r['S'])}: without communication fwd {r['nocomm_fwd']:.1f} ms, "
          f"f+b {r['nocomm_fb']:.1f} ms (with it: {extra:+.1f}%){alone}")
if win_rows:
    print()
    print("Sliding window (causal, W keys): the ring against the same layers without communication (issue 19: "
          "within 5%),\nand the MB one rank sends per forward+backward (max over ranks; independent of N for a window)")
    for r in sorted(win_rows, key=lambda r: (r["S"], r["impl"])):
        print(f"{r['impl']} S={int(r['S'])} N={int(r['N'])}: tN f+b {r['tn_fb']:.2f} ms, without communication "
              f"{r['nocomm_fb']:.2f} ms ({100 * (r['tn_fb'] / r['nocomm_fb'] - 1):+.1f}%), t1 f+b {r['t1_fb']:.2f} ms, "
              f"sent {r['sent_mb']:.1f} MB per rank")
if doc_rows:
    print()
    print("Packed documents: causal inside D documents of S/D tokens (doc ids + FlashOptions::documents: the ring skips "
          "blocks\nand hops that share no document) against plain causal, same layout; N-GPU times in ms; "
          "speedup = causal ms / documents ms\n(the documents hold 1/D of the causal pairs); t1 = one GPU with the "
          "documents, eff = t1 / (N * tN)")
    hdr = (f"{'impl':<20} {'S':>7} {'D':>3} | {'fwd causal':>10} {'fwd docs':>8} {'speedup':>7} | {'f+b causal':>10} {'f+b docs':>8} "
           f"{'speedup':>7} | {'t1 f+b':>8} {'eff':>5}")
    print(hdr)
    print("-" * len(hdr))
    plain = {(r["impl"], r["S"]): r for r in rows}
    for d in sorted(doc_rows, key=lambda r: (r["S"], r["impl"])):
        c = plain.get((d["impl"].rsplit("-docs", 1)[0], d["S"]))
        nan = float("nan")
        cf, cb = (c["tn_fwd"], c["tn_fb"]) if c else (nan, nan)
        print(f"{d['impl']:<20} {int(d['S']):>7} {int(d['docs']):>3} | {cf:10.1f} {d['tn_fwd']:8.1f} "
              f"{cf / d['tn_fwd']:7.1f} | {cb:10.1f} {d['tn_fb']:8.1f} {cb / d['tn_fb']:7.1f} | {d['t1_fb']:8.1f} "
              f"{d['t1_fb'] / (d['N'] * d['tn_fb']):5.2f}")
    print("PyTorch context_parallel: no packed-document run. Its ring runs SDPA with is_causal and no document mask; "
          "document\nmasks under context parallelism need FlexAttention through a private torch API.")
PY
