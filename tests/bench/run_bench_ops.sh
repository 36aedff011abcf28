#!/usr/bin/env bash
# Runs bench_ops (lctx) and bench_ops_torch.py (PyTorch) on the same GPU and prints one table
# with the ratio lctx / torch per workload (acceptance: GEMM >= 0.95x torch.matmul).
# Usage: tests/bench/run_bench_ops.sh [path/to/bench_ops] [gemm_size] [norm_rows] [norm_cols]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-$HERE/../../build/tests/bench/bench_ops}"
shift || true
LCTX_OUT="$("$BIN" "$@")"
TORCH_OUT="$(python3 "$HERE/bench_ops_torch.py" "$@")"
echo "$LCTX_OUT"
echo "$TORCH_OUT"
python3 - "$LCTX_OUT" "$TORCH_OUT" <<'PY'
import sys
def parse(text):
    out = {}
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "RESULT":
            out[f[1]] = (float(f[2]), f[3])
    return out
lctx, torch = parse(sys.argv[1]), parse(sys.argv[2])
print(f"\n{'workload':<34}{'lctx':>14}{'torch':>14}{'lctx/torch':>12}")
for name in list(lctx) + [n for n in torch if n not in lctx]:
    l, t = lctx.get(name), torch.get(name)
    ls = f"{l[0]:.1f} {l[1]}" if l else "-"
    ts = f"{t[0]:.1f} {t[1]}" if t else "-"
    ratio = f"{l[0] / t[0]:.3f}x" if l and t else ""
    print(f"{name:<34}{ls:>14}{ts:>14}{ratio:>12}")
PY
