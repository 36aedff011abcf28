#!/usr/bin/env bash
# Runs bench_memory (lctx's nsa, memory and dense softmax mixers) and bench_memory_fla.py (fla's
# NSA kernels plus a FlexAttention window) back to back on the same GPU and prints one table:
# fwd and fwd+bwd ms, the speed of lctx nsa over fla (fla ms / lctx ms, > 1: lctx faster) and
# over lctx's dense softmax (the crossover: > 1 where nsa is faster).
# Usage: tests/bench/run_bench_memory.sh <build dir or bench_memory binary> [repetitions=5] [max T=131072]
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-5}"
MAXT="${3:-131072}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_memory"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp)"
"$BIN" "$REPS" "$MAXT" | tee "$LOG"
(cd "$HERE" && python3 bench_memory_fla.py "$REPS" "$MAXT") | tee -a "$LOG" || true  # the table shows what ran
python3 - "$LOG" <<'PY'
import re, sys
r = {}
for line in open(sys.argv[1]):
    m = re.match(r"(?:lctx )?(?P<impl>\S+) T=(?P<T>\d+) fwd (?P<fwd>[\d.]+) fwdbwd (?P<fb>[\d.]+)", line)
    if m:
        r[(m["impl"], int(m["T"]))] = (float(m["fwd"]), float(m["fb"]))
NAN = (float("nan"),) * 2
print("\nB=1, 64 query / 4 KV heads of 128, bf16; blocks of 64, top 16, window 512; ms; "
      "x-fla = fla+flex ms / lctx nsa ms, x-dense = lctx softmax ms / lctx nsa ms (> 1: nsa faster)")
print(f"{'T':>7} {'nsa fwd':>8} {'nsa f+b':>8} {'memory f+b':>10} {'dense f+b':>9} {'fla+flex f+b':>12} "
      f"{'x-fla':>6} {'x-dense':>7}")
for T in sorted({k[1] for k in r}):
    n, m, s, f = (r.get((i, T), NAN) for i in ("nsa", "memory", "softmax", "fla+flex"))
    print(f"{T:>7} {n[0]:8.3f} {n[1]:8.3f} {m[1]:10.3f} {s[1]:9.3f} {f[1]:12.3f} {f[1] / n[1]:6.2f} {s[1] / n[1]:7.2f}")
PY
