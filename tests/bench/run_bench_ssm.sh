#!/usr/bin/env bash
# Runs bench_ssm (lctx) and bench_ssm_torch.py (the chunked pure-PyTorch Mamba-1 scan and
# mamba_ssm's Triton SSD) on the same GPU and prints the tables of issue 18:
#   selective scan (B=1, d_inner 4096, d_state 16, bf16): fwd and fwd+bwd ms, GB/s on the bytes
#   the kernels must move and % of the measured copy bandwidth, the PyTorch scan's ms and the
#   speedup; the acceptance checks (>= 60% fwd, >= 50% fwd+bwd at T >= 32k);
#   Mamba-2 SSD (nheads 32, headdim 64, d_state 128): lctx vs mamba_chunk_scan_combined;
#   whole layers (model dim 2048): mamba and mamba2 next to softmax, as lctx-train builds them.
# mamba_ssm comes from the source tree without its compiled extension: put .whl/mamba_src on
# PYTHONPATH (the script adds $REPO/.whl/mamba_src when present), the mamba_ssm/ folder of its
# sdist (`pip download --no-deps --no-binary :all:` fails building it: take the .tar.gz from PyPI);
# bench_ssm_torch.py loads its Triton modules without running the package's __init__.
# Usage: tests/bench/run_bench_ssm.sh <build dir or bench_ssm binary> [reps=20] [max_T=1048576] [parts=all|scan|ssd|layer]
set -euo pipefail
BUILD="${1:-build}"
REPS="${2:-20}"
MAXT="${3:-1048576}"
PARTS="${4:-all}"
BIN="$BUILD"; [ -d "$BUILD" ] && BIN="$BUILD/tests/bench/bench_ssm"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -d "$HERE/../../.whl/mamba_src" ] && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$HERE/../../.whl/mamba_src"
LOG="$(mktemp)"
"$BIN" "$REPS" "$MAXT" "$PARTS" | tee "$LOG"
python3 "$HERE/bench_ssm_torch.py" "$REPS" "$MAXT" "$PARTS" | tee -a "$LOG" || true  # the tables show what ran
python3 - "$LOG" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
copy = re.search(r"copy lctx (\d+) GB/s", text)
scan = {int(m[1]): m for m in re.finditer(
    r"scan lctx T=(\d+) fwd ([\d.]+) ms fwdbwd ([\d.]+) ms fwd_GBs (\d+) fb_GBs (\d+) fwd_pct ([\d.]+) fb_pct ([\d.]+)",
    text)}
torch = {(int(m[1]), int(m[2])): (float(m[3]), float(m[4])) for m in re.finditer(
    r"scan torch-chunked T=(\d+) D=(\d+) fwd ([\d.]+) ms fwdbwd ([\d.]+) ms", text)}
print(f"\nSelective scan, B=1, d_inner 4096, d_state 16, bf16 (z, D, dt_bias, softplus); copy ceiling "
      f"{copy[1] if copy else '?'} GB/s (read + written)")
print(f"{'T':>8} {'fwd ms':>8} {'fb ms':>8} {'fwd GB/s':>9} {'fb GB/s':>8} {'fwd %':>6} {'fb %':>6} "
      f"{'torch fwd':>10} {'torch fb':>9} {'x fwd':>6} {'x fb':>6}")
for T, m in sorted(scan.items()):
    t = torch.get((T, 4096))
    tf, tb = (f"{t[0]:10.2f}", f"{t[1]:9.2f}") if t else (f"{'-':>10}", f"{'-':>9}")
    xf, xb = (f"{t[0] / float(m[2]):6.1f}", f"{t[1] / float(m[3]):6.1f}") if t else (f"{'-':>6}", f"{'-':>6}")
    print(f"{T:>8} {float(m[2]):8.3f} {float(m[3]):8.3f} {m[4]:>9} {m[5]:>8} {float(m[6]):6.1f} {float(m[7]):6.1f} "
          f"{tf} {tb} {xf} {xb}")
t = torch.get((8192, 2048))
if t:
    print(f"PyTorch chunked scan at d_inner 2048, T=8k: fwd {t[0]:.2f} ms, fwd+bwd {t[1]:.2f} ms "
          f"(the issue measured 12.9 / 74.5)")
print("\nAcceptance (issue 18), PASS/FAIL for information (not the exit status):")
for T, m in sorted(scan.items()):
    if T >= 32768:
        for what, pct, need in (("fwd", float(m[6]), 60), ("fwd+bwd", float(m[7]), 50)):
            print(f"  scan T={T} {what}: {pct:.1f}% of copy >= {need}%: {'PASS' if pct >= need else 'FAIL'}")

ssd_l = {int(m[1]): (float(m[2]), float(m[3])) for m in re.finditer(
    r"ssd lctx T=(\d+) fwd ([\d.]+) ms fwdbwd ([\d.]+) ms", text)}
ssd_m = {int(m[1]): (float(m[2]), float(m[3])) for m in re.finditer(
    r"ssd mamba_ssm T=(\d+) fwd ([\d.]+) ms fwdbwd ([\d.]+) ms", text)}
print("\nMamba-2 SSD, nheads 32, headdim 64, d_state 128, bf16 (ms; x = mamba_ssm / lctx)")
if "ssd: no CUDA kernel" in text:
    print("  lctx: ssd: no CUDA kernel")
print(f"{'T':>8} {'lctx fwd':>9} {'lctx fb':>8} {'mamba fwd':>10} {'mamba fb':>9} {'x fwd':>6} {'x fb':>6}")
na = (float("nan"),) * 2
for T in sorted(set(ssd_l) | set(ssd_m)):
    l, m = ssd_l.get(T, na), ssd_m.get(T, na)
    print(f"{T:>8} {l[0]:9.3f} {l[1]:8.3f} {m[0]:10.3f} {m[1]:9.3f} {m[0] / l[0]:6.2f} {m[1] / l[1]:6.2f}")

layer = {(m[1], int(m[2])): (float(m[3]), float(m[4])) for m in re.finditer(
    r"layer lctx (\S+) T=(\d+) fwd ([\d.]+) ms fwdbwd ([\d.]+) ms", text)}
if layer:
    print("\nWhole layers at model dim 2048 (lctx-train's mixers with their projections; fwd+bwd ms, "
          "M tokens/s; x = softmax ms / layer ms)")
    print(f"{'T':>8} {'mamba':>9} {'Mtok/s':>7} {'x':>6} {'mamba2':>9} {'Mtok/s':>7} {'x':>6} {'softmax':>9} {'Mtok/s':>7}")
    for T in sorted({k[1] for k in layer}):
        sm = layer.get(("softmax", T), na)[1]
        row = f"{T:>8}"
        for kind in ("mamba", "mamba2"):
            fb = layer.get((kind, T), na)[1]
            row += f" {fb:9.3f} {T / fb / 1e3:7.2f} {sm / fb:6.2f}"
        print(row + f" {sm:9.3f} {T / sm / 1e3:7.2f}")
PY
