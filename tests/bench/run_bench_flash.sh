#!/usr/bin/env bash
# Runs bench_flash (lctx's kernels, and the automatic backend choice that uses cuDNN where it
# can) and bench_flash_torch.py (PyTorch SDPA flash/cuDNN) back to back on the same GPU and
# prints a combined table: lctx's kernels / torch flash, lctx auto / torch cuDNN.
# Usage: tests/bench/run_bench_flash.sh <build dir or bench_flash binary> [repetitions] [max S]
# LCTX_BENCH_ROUNDS: run lctx and PyTorch alternately this many times (default 1) and report the
#   median of each figure over the rounds (GPU clocks drift by a few % between runs).
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-10}"
MAXS="${3:-65536}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_flash"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp)"
ROUNDS="${LCTX_BENCH_ROUNDS:-1}"
: > "$LOG"
for ((round = 1; round <= ROUNDS; ++round)); do
  (( ROUNDS > 1 )) && echo "== round $round of $ROUNDS"
  "$BIN" "$REPS" "$MAXS" | tee -a "$LOG"
  python3 "$HERE/bench_flash_torch.py" "$REPS" "$MAXS" | tee -a "$LOG"
done
python3 - "$LOG" "$ROUNDS" <<'PY'
import re, statistics, sys
runs, order = {}, []  # shape -> impl -> [(fwd, fwdbwd) of every round]
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (S=\d+ H=\d+ D=\d+ \w+) fwd ([\d.]+) fwdbwd ([\d.]+)", line)
    if m:
        impl, shape = m.group(1), m.group(2)
        if shape not in runs:
            runs[shape] = {}
            order.append(shape)
        runs[shape].setdefault(impl, []).append((float(m.group(3)), float(m.group(4))))
rows = {s: {i: tuple(statistics.median(x[j] for x in v) for j in range(2)) for i, v in d.items()}
        for s, d in runs.items()}
n_rounds = int(sys.argv[2])
print()
print("TFLOP/s; kern = lctx's own kernels, auto = lctx's automatic backend (cuDNN where it can); "
      "x fl = kern / torch flash, x cu = auto / torch cudnn" + (f"; median of {n_rounds} rounds" if n_rounds > 1 else ""))
for i, part in enumerate(["forward", "forward+backward"]):
    print(f"\n{part}\n{'shape (bf16, B=1)':<28} {'kern':>7} {'auto':>7} {'t-flash':>8} {'t-cudnn':>8} "
          f"{'x fl':>6} {'x cu':>6}")
    for s in order:
        r = rows[s]
        nan = (float("nan"),) * 2
        k, a = r.get("lctx-kernels", nan), r.get("lctx-auto", nan)
        fl, cu = r.get("torch-flash", nan), r.get("torch-cudnn", nan)
        print(f"{s:<28} {k[i]:7.1f} {a[i]:7.1f} {fl[i]:8.1f} {cu[i]:8.1f} {k[i] / fl[i]:6.2f} {a[i] / cu[i]:6.2f}")
PY
