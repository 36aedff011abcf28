#!/usr/bin/env bash
# Runs bench_flash (lctx) and bench_flash_torch.py (PyTorch SDPA flash/cuDNN) back to back on
# the same GPU and prints a combined table with the ratios lctx / torch.
# Usage: tests/bench/run_bench_flash.sh <build dir or bench_flash binary> [repetitions] [max S]
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-10}"
MAXS="${3:-65536}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_flash"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp)"
"$BIN" "$REPS" "$MAXS" | tee "$LOG"
python3 "$HERE/bench_flash_torch.py" "$REPS" "$MAXS" | tee -a "$LOG"
python3 - "$LOG" <<'PY'
import re, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (S=\d+ H=\d+ D=\d+ \w+) fwd ([\d.]+) fwdbwd ([\d.]+)", line)
    if m:
        impl, shape = m.group(1), m.group(2)
        if shape not in rows:
            rows[shape] = {}
            order.append(shape)
        rows[shape][impl] = (float(m.group(3)), float(m.group(4)))
print()
print(f"{'shape (bf16, B=1)':<28} {'lctx fwd':>9} {'flash':>7} {'cudnn':>7} {'x flash':>8} | "
      f"{'lctx f+b':>9} {'flash':>7} {'cudnn':>7} {'x flash':>8}   (TFLOP/s)")
for s in order:
    r = rows[s]
    l = r.get("lctx", (float("nan"),) * 2)
    fl = r.get("torch-flash", (float("nan"),) * 2)
    cu = r.get("torch-cudnn", (float("nan"),) * 2)
    print(f"{s:<28} {l[0]:9.1f} {fl[0]:7.1f} {cu[0]:7.1f} {l[0] / fl[0]:8.2f} | "
          f"{l[1]:9.1f} {fl[1]:7.1f} {cu[1]:7.1f} {l[1] / fl[1]:8.2f}")
PY
