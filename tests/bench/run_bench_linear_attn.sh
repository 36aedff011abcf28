#!/usr/bin/env bash
# Runs bench_linear_attn (lctx's chunked linear attention, decay none and fixed, and lctx's causal
# softmax flash attention at the same T) and bench_linear_attn_fla.py (fla's chunk_linear_attn and
# chunk_retention) back to back on the same GPU and prints one table: fwd and fwd+bwd ms, tokens/s
# of fwd+bwd, and the speed of lctx over fla (fla ms / lctx ms, > 1: lctx faster) and over lctx
# softmax (the crossover: > 1 where linear attention is faster).
# Usage: tests/bench/run_bench_linear_attn.sh <build dir or bench_linear_attn binary> [repetitions] [max T]
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-10}"
MAXT="${3:-131072}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_linear_attn"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp)"
"$BIN" "$REPS" "$MAXT" | tee "$LOG"
(cd "$HERE" && python3 bench_linear_attn_fla.py "$REPS" "$MAXT") | tee -a "$LOG" || true  # the table shows what ran
python3 - "$LOG" <<'PY'
import re, sys
LINE = r"(?P<impl>\S+) (?P<case>\S+) T=(?P<T>\d+) fwd (?P<fwd>[\d.]+) fwdbwd (?P<fb>[\d.]+)"
r = {}
for line in open(sys.argv[1]):
    m = re.match(LINE, line)
    if m:
        r[(m["impl"], m["case"], int(m["T"]))] = (float(m["fwd"]), float(m["fb"]))
NAN = (float("nan"),) * 2
Ts = sorted({k[2] for k in r})
print("\nB=1, H=16, D=128, bf16, scale 1, no normalisation; ms; x = fla ms / lctx ms (> 1: lctx faster); "
      "vs-sm = lctx softmax fwd+bwd ms / lctx linear fwd+bwd ms")
print(f"{'case':<6} {'T':>8} {'lctx fwd':>9} {'fla fwd':>8} {'x fwd':>6} {'lctx f+b':>9} {'fla f+b':>8} {'x f+b':>6} "
      f"{'Mtok/s':>7} {'vs-sm':>6}")
for case in ("none", "fixed"):
    for T in Ts:
        l, f, s = r.get(("lctx", case, T), NAN), r.get(("fla", case, T), NAN), r.get(("lctx", "softmax", T), NAN)
        print(f"{case:<6} {T:>8} {l[0]:9.3f} {f[0]:8.3f} {f[0] / l[0]:6.2f} {l[1]:9.3f} {f[1]:8.3f} {f[1] / l[1]:6.2f} "
              f"{T / l[1] * 1e-3:7.1f} {s[1] / l[1]:6.2f}")
PY
