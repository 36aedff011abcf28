#!/usr/bin/env bash
# Runs bench_sparse (lctx: block masks, strided attention, dense causal) and
# bench_sparse_torch.py (FlexAttention compiled, the same masks) on the same GPU and prints one
# table per S: fwd and fwd+bwd ms and TFLOP/s on the visible pairs, and Flex ms / lctx ms
# (> 1: lctx faster), then the issue 19 checks at S=64k (PASS/FAIL for information only).
# Usage: tests/bench/run_bench_sparse.sh <build dir or bench_sparse binary> [repetitions] [max S]
# LCTX_FLEX_LOG=<file>: take FlexAttention's lines from this earlier output of
#   bench_sparse_torch.py (e.g. run while lctx was building) instead of running it now.
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-10}"
MAXS="${3:-65536}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_sparse"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp)"
"$BIN" "$REPS" "$MAXS" | tee "$LOG"
if [ -n "${LCTX_FLEX_LOG:-}" ]; then
  cat "$LCTX_FLEX_LOG" >> "$LOG"
else
  python3 "$HERE/bench_sparse_torch.py" "$REPS" "$MAXS" | tee -a "$LOG" || true
fi
python3 - "$LOG" <<'PY'
import re, sys
CASE = (r"case (?P<case>\S+) S=(?P<S>\d+) (?P<impl>\S+): fwd (?P<fwd>[\d.]+) ms, fwd\+bwd (?P<fb>[\d.]+) ms \| "
        r"(?P<tf>[\d.]+) / (?P<tfb>[\d.]+) TFLOP/s")
rows = {}
for line in open(sys.argv[1]):
    m = re.match(CASE, line)
    if m:
        rows.setdefault(int(m["S"]), {}).setdefault(m["case"], {})[m["impl"]] = (
            float(m["fwd"]), float(m["fb"]), float(m["tf"]), float(m["tfb"]))
print("\nB=1 H=16 D=128 bf16; ms and TFLOP/s on visible pairs; x flex = Flex ms / lctx ms (> 1: lctx faster)")
for S in sorted(rows):
    print(f"\nS={S}\n{'case':<16} {'impl':<13} {'fwd ms':>8} {'f+b ms':>8} {'fwd TF':>7} {'f+b TF':>7} "
          f"{'x flex fwd':>10} {'x flex f+b':>10}")
    for case, impls in rows[S].items():
        flex = impls.get("torch-flex")
        for impl, (f, fb, tf, tfb) in impls.items():
            rf = f"{flex[0] / f:10.2f}" if flex and impl != "torch-flex" else f"{'':>10}"
            rfb = f"{flex[1] / fb:10.2f}" if flex and impl != "torch-flex" else f"{'':>10}"
            print(f"{case:<16} {impl:<13} {f:8.3f} {fb:8.3f} {tf:7.1f} {tfb:7.1f} {rf} {rfb}")
big = rows.get(65536, {})
def ratio(case, impl, i):
    c = big.get(case, {})
    return c["torch-flex"][i] / c[impl][i] if "torch-flex" in c and impl in c else None
print("\nAcceptance (issue 19) at S=64k, fwd+bwd, PASS/FAIL for information (not the exit status):")
for case, impl, need in (("window4096", "lctx-mask", 1.0), ("window4096", "lctx-kernels", 1.0),
                         ("window4096+g64", "lctx-mask", 1.0), ("window4096+g64", "lctx-split", 1.0),
                         ("strided1024/64", "lctx-split", 5.0)):
    r = ratio(case, impl, 1)
    print(f"  {case} {impl}: Flex / lctx = " + ("not measured" if r is None else
          f"{r:.2f} >= {need}: {'PASS' if r >= need else 'FAIL'}"))
PY
