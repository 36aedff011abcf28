#!/usr/bin/env bash
# Runs bench_flash (lctx's kernels, and the automatic backend choice that uses cuDNN where it
# can) and bench_flash_torch.py (PyTorch SDPA flash/cuDNN, FlexAttention) back to back on the
# same GPU and prints two combined tables:
#   shapes (full, causal): TFLOP/s, lctx's kernels / torch flash, lctx auto / torch cuDNN;
#   masks at S=16k and 64k (issue 22: causal, 16 documents of equal and of random lengths,
#   ALiBi, window 4096): ms of lctx kernels, lctx auto, FlexAttention compiled and cuDNN SDPA
#   (causal), and lctx / Flex speed; then the issue's acceptance checks, PASS or FAIL (printed
#   only: the exit status does not depend on them).
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
  python3 "$HERE/bench_flash_torch.py" "$REPS" "$MAXS" | tee -a "$LOG" || true  # the tables show what ran
done
python3 - "$LOG" "$ROUNDS" <<'PY'
import re, statistics, sys
SHAPE = r"(?P<impl>\S+) (?P<shape>S=\d+ H=\d+ D=\d+ \w+) fwd (?P<fwd>[\d.]+) fwdbwd (?P<fb>[\d.]+)"  # TFLOP/s
CASE = r"case (?P<case>\S+) (?P<S>S=\d+) (?P<impl>\S+): fwd (?P<fwd>[\d.]+) ms, fwd\+bwd (?P<fb>[\d.]+) ms"
lines = open(sys.argv[1]).read().splitlines()


def collect(pattern, key):
    """key -> impl -> (fwd, fwd+bwd), the median of every round, keys in first-seen order."""
    runs = {}
    for line in lines:
        m = re.match(pattern, line)
        if m:
            runs.setdefault(key(m), {}).setdefault(m["impl"], []).append((float(m["fwd"]), float(m["fb"])))
    return {k: {i: tuple(statistics.median(x[j] for x in v) for j in range(2)) for i, v in d.items()}
            for k, d in runs.items()}


NAN = (float("nan"),) * 2
n_rounds = int(sys.argv[2])
rounds = f"; median of {n_rounds} rounds" if n_rounds > 1 else ""
shapes = collect(SHAPE, lambda m: m["shape"])
cases = collect(CASE, lambda m: (m["S"], m["case"]))  # ms
print()
print("TFLOP/s; kern = lctx's own kernels, auto = lctx's automatic backend (cuDNN where it can); "
      "x fl = kern / torch flash, x cu = auto / torch cudnn" + rounds)
for i, part in enumerate(["forward", "forward+backward"]):
    print(f"\n{part}\n{'shape (bf16, B=1)':<28} {'kern':>7} {'auto':>7} {'t-flash':>8} {'t-cudnn':>8} "
          f"{'x fl':>6} {'x cu':>6}")
    for s, r in shapes.items():
        k, a = r.get("lctx-kernels", NAN), r.get("lctx-auto", NAN)
        fl, cu = r.get("torch-flash", NAN), r.get("torch-cudnn", NAN)
        print(f"{s:<28} {k[i]:7.1f} {a[i]:7.1f} {fl[i]:8.1f} {cu[i]:8.1f} {k[i] / fl[i]:6.2f} {a[i] / cu[i]:6.2f}")

def ms(x, width):  # "-" where the implementation has no such case (cuDNN: causal only) or failed
    return f"{x:{width}.2f}" if x == x else f"{'-':>{width}}"


print()
print("Masks, H=16 D=128 bf16 B=1, all causal, ms" + rounds + ". docs16: 16 documents of S/16; docs16-rand: 16 "
      "documents of\nrandom lengths (mean S/16); alibi: ALiBi slopes 2^(-8(h+1)/H); window4096: sliding window of 4096. "
      "kern / auto:\nlctx's own kernels / automatic backend; flex: FlexAttention (torch.compile, BlockMask); cudnn: "
      "SDPA cuDNN (causal only);\nx flex = Flex ms / lctx ms (> 1: lctx faster).")
for i, part in enumerate(["forward", "forward+backward"]):
    print(f"\n{part} (ms)\n{'S':<8} {'case':<12} {'kern':>9} {'auto':>9} {'flex':>9} {'cudnn':>9} "
          f"{'kern x flex':>11} {'auto x flex':>11}")
    for (s, c), r in sorted(cases.items(), key=lambda kv: int(kv[0][0][2:])):  # by S, cases in run order
        k, a = r.get("lctx-kernels", NAN), r.get("lctx-auto", NAN)
        fx, cu = r.get("torch-flex", NAN), r.get("torch-cudnn", NAN)
        print(f"{s:<8} {c:<12} {ms(k[i], 9)} {ms(a[i], 9)} {ms(fx[i], 9)} {ms(cu[i], 9)} {ms(fx[i] / k[i], 11)} "
              f"{ms(fx[i] / a[i], 11)}")


def at64k(case, impl, i):  # ms of the forward (i = 0) or forward+backward (1), None if not measured
    r = cases.get(("S=65536", case), {}).get(impl)
    return None if r is None else r[i]


def check(what, lhs, op, rhs):
    if lhs is None or rhs is None:
        print(f"  {what}: not measured")
    else:
        ok = lhs <= rhs if op == "<=" else lhs >= rhs
        print(f"  {what}: {lhs:.2f} {op} {rhs:.2f}: {'PASS' if ok else 'FAIL'}")


print("\nAcceptance (issue 22) at S=64k, PASS/FAIL for information (not the exit status):")
check("(a) documents 16 x 4096, fwd+bwd ms: lctx kernels <= Flex",
      at64k("docs16", "lctx-kernels", 1), "<=", at64k("docs16", "torch-flex", 1))
for i, part in enumerate(["fwd", "fwd+bwd"]):
    causal, docs = at64k("causal", "lctx-kernels", i), at64k("docs16", "lctx-kernels", i)
    check(f"(a) lctx kernels {part} ms, causal / documents 16 x 4096 >= 16/1.3",
          None if causal is None or docs is None else causal / docs, ">=", 16 / 1.3)
for i, part in enumerate(["fwd", "fwd+bwd"]):
    check(f"(b) ALiBi causal, {part} ms: lctx auto <= Flex", at64k("alibi", "lctx-auto", i), "<=",
          at64k("alibi", "torch-flex", i))
PY
