#!/usr/bin/env bash
# Everything a GPU machine checks, in one call: configure + build all targets, `ctest -L gpu`,
# then (with 2+ GPUs) the ring benchmark against PyTorch context parallelism and a 2-GPU
# lctx-train run of configs/gpu-2-ring.yaml under mpirun. Logs go to $1 (default gpu-logs/).
#   bash tests/run_gpu_checks.sh "$OUT"              # all of it
#   LCTX_GPU_CHECKS="tests bench_ops bench_flash" bash tests/run_gpu_checks.sh logs
#   (also bench_linear_attn, bench_ssm, bench_sparse, bench_memory, phases, and with 2+ GPUs sp_families)
#   LCTX_GPU_TESTS=<regex>: only the gpu tests whose names match (ctest -R), e.g. "nsa|cross|memory"
set -uo pipefail
LOGS="${1:-gpu-logs}"
CHECKS="${LCTX_GPU_CHECKS:-tests bench_ring train_2gpu}"
BUILD="${LCTX_BUILD_DIR:-build-gpu}"
mkdir -p "$LOGS"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
nvidia-smi -L
want() { [[ " $CHECKS " == *" $1 "* ]]; }

t0=$(date +%s)
cmake -G Ninja -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90a-real > "$LOGS/configure.log" 2>&1 \
  && ninja -C "$BUILD" -j "$(nproc)" > "$LOGS/build.log" 2>&1 \
  || { tail -40 "$LOGS/configure.log" "$LOGS/build.log"; exit 1; }
echo "== build: $(( $(date +%s) - t0 )) s"

if want tests; then
  ctest --test-dir "$BUILD" -L gpu ${LCTX_GPU_TESTS:+-R "$LCTX_GPU_TESTS"} --output-on-failure > "$LOGS/ctest_gpu.log" 2>&1
  grep -E "Test +#|tests passed|FAILED|Skipped|SKIPPED" "$LOGS/ctest_gpu.log" | grep -v "^\[ *RUN"
fi
if want bench_ops; then
  bash tests/bench/run_bench_ops.sh "$BUILD/tests/bench/bench_ops" > "$LOGS/bench_ops.log" 2>&1
  tail -8 "$LOGS/bench_ops.log"
fi
if want bench_flash; then
  bash tests/bench/run_bench_flash.sh "$BUILD" > "$LOGS/bench_flash.log" 2>&1
  tail -16 "$LOGS/bench_flash.log"
fi
# Issues 17-20: lctx vs fla / mamba_ssm / FlexAttention (the peers' packages must be importable).
for b in linear_attn ssm sparse memory; do
  if want bench_$b; then
    bash tests/bench/run_bench_$b.sh "$BUILD" > "$LOGS/bench_$b.log" 2>&1
    tail -24 "$LOGS/bench_$b.log"
  fi
done
# Where the nsa and memory mixers' time goes (core/phase_log.h): median ms per phase at 16k and 64k.
if want phases; then
  LCTX_PHASES=1 "$BUILD/tests/bench/bench_memory" 3 65536 nsa,memory > "$LOGS/phases.log" 2>&1
  python3 - "$LOGS/phases.log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"lctx phases (.+?): (.*)", line)
    if m:
        for name, ms in re.findall(r"(\w+) ([\d.]+)", m[2]):
            runs.setdefault((m[1], name), []).append(float(ms))
        continue
    m = re.match(r"lctx (\S+) T=(\d+) fwd ([\d.]+) fwdbwd ([\d.]+)", line)
    if m:
        print(f"{m[1]} T={m[2]}: fwd {m[3]} ms, fwd+bwd {m[4]} ms; median ms per phase:")
        for (label, name), v in runs.items():
            print(f"  {label:16} {name:16} {statistics.median(v):9.3f}")
        runs = {}
PY
fi
if want bench_ring && [ "$NGPU" -ge 2 ]; then
  bash tests/bench/run_bench_ring.sh "$BUILD" 2 131072,524288 3 200 > "$LOGS/bench_ring.log" 2>&1
  tail -14 "$LOGS/bench_ring.log"
fi
# Issues 17, 18, 20: the linear-time and sparse kinds trained on 2 GPUs (SP efficiency, 4x length).
if want sp_families && [ "$NGPU" -ge 2 ]; then
  bash tests/bench/run_sp_families.sh "$BUILD" > "$LOGS/sp_families.log" 2>&1
  tail -16 "$LOGS/sp_families.log"
fi
if want train_2gpu && [ "$NGPU" -ge 2 ]; then
  timeout 240 mpirun -np 2 --bind-to none -x NCCL_NVLS_ENABLE "$BUILD/trainers/lctx-train" configs/gpu-2-ring.yaml \
    --set parallel.simulate=0 --set train.steps=30 --set logging.every=5 --set eval.every=30 \
    --set checkpoint.every=30 --out /tmp/lctx-gpu-2-ring > "$LOGS/train_2gpu.log" 2>&1
  echo "== train_2gpu rc=$?"
  tail -12 "$LOGS/train_2gpu.log"
fi
echo "== total: $(( $(date +%s) - t0 )) s"
