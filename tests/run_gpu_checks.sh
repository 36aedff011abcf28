#!/usr/bin/env bash
# Everything a GPU machine checks, in one call: configure + build, then the checks in the order
# given: `ctest -L gpu`, the benchmarks against their peers, and with 2+ GPUs the ring benchmark
# against PyTorch context parallelism and a 2-GPU lctx-train run of configs/gpu-2-ring.yaml under
# mpirun. Logs go to $1 (default gpu-logs/); each check prints its summary as soon as it ends.
#   bash tests/run_gpu_checks.sh "$OUT"              # tests bench_ring train_2gpu
#   LCTX_GPU_CHECKS="phases tests bench_memory" bash tests/run_gpu_checks.sh logs
#   checks: tests bench_ops bench_flash bench_linear_attn bench_ssm bench_sparse bench_memory
#   phases, and with 2+ GPUs bench_ring sp_families train_2gpu
#   LCTX_GPU_TESTS=<regex>: only the gpu tests whose names match (ctest -R), e.g. "nsa|cross|memory"
#   LCTX_GPU_DEADLINE=<s> (default 570): no check starts, and a running one is stopped, that
#   many seconds after the start, so a call with a time limit still ends with its summaries.
# Only the targets the checks need are built (everything for `tests` without LCTX_GPU_TESTS).
set -uo pipefail
LOGS="${1:-gpu-logs}"
CHECKS="${LCTX_GPU_CHECKS:-tests bench_ring train_2gpu}"
BUILD="${LCTX_BUILD_DIR:-build-gpu}"
DEADLINE="${LCTX_GPU_DEADLINE:-570}"
mkdir -p "$LOGS"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
nvidia-smi -L
t0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }

# The build targets of the checks (all of them when a check needs the whole test suite).
targets=()
for c in $CHECKS; do
  case "$c" in
    tests) if [ -n "${LCTX_GPU_TESTS:-}" ]; then
             targets+=($(grep -rhoE "NAME test_[a-z0-9_]*gpu" tests --include=CMakeLists.txt | awk '{print $2}' |
                          grep -E "$LCTX_GPU_TESTS"))
           else targets=(all); break; fi ;;
    bench_*) targets+=("${c}") ;;
    phases) targets+=(bench_memory) ;;
    sp_families|train_2gpu) targets+=(lctx-train) ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(all)
cmake -G Ninja -S . -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES=90a-real > "$LOGS/configure.log" 2>&1 \
  && ninja -C "$BUILD" -j "$(nproc)" "${targets[@]}" > "$LOGS/build.log" 2>&1 \
  || { tail -40 "$LOGS/configure.log" "$LOGS/build.log"; exit 1; }
echo "== build (${targets[*]}): $(( $(date +%s) - t0 )) s"

# The nsa and memory mixers' median phase times (core/phase_log.h) from a bench_memory log.
phase_table() {
  python3 - "$1" <<'PY'
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
}

for c in $CHECKS; do
  if [ "$(left)" -le 5 ]; then echo "== $c: skipped (deadline of $DEADLINE s)"; continue; fi
  t1=$(date +%s)
  case "$c" in
    tests)
      timeout "$(left)" ctest --test-dir "$BUILD" -L gpu ${LCTX_GPU_TESTS:+-R "$LCTX_GPU_TESTS"} --output-on-failure \
        > "$LOGS/ctest_gpu.log" 2>&1
      grep -E "Test +#|tests passed|FAILED|Skipped|SKIPPED" "$LOGS/ctest_gpu.log" | grep -v "^\[ *RUN" ;;
    bench_ops)
      timeout "$(left)" bash tests/bench/run_bench_ops.sh "$BUILD/tests/bench/bench_ops" > "$LOGS/bench_ops.log" 2>&1
      tail -8 "$LOGS/bench_ops.log" ;;
    bench_flash)
      timeout "$(left)" bash tests/bench/run_bench_flash.sh "$BUILD" > "$LOGS/bench_flash.log" 2>&1
      tail -16 "$LOGS/bench_flash.log" ;;
    bench_linear_attn|bench_ssm|bench_sparse|bench_memory)  # issues 17-20: against fla / mamba_ssm / FlexAttention
      timeout "$(left)" bash "tests/bench/run_$c.sh" "$BUILD" > "$LOGS/$c.log" 2>&1
      tail -24 "$LOGS/$c.log" ;;
    phases)  # where the nsa and memory mixers' time goes, at 16k and 64k
      LCTX_PHASES=1 timeout "$(left)" "$BUILD/tests/bench/bench_memory" 3 65536 nsa,memory > "$LOGS/phases.log" 2>&1
      phase_table "$LOGS/phases.log" ;;
    bench_ring)
      [ "$NGPU" -ge 2 ] || { echo "== bench_ring: needs 2 GPUs"; continue; }
      timeout "$(left)" bash tests/bench/run_bench_ring.sh "$BUILD" 2 131072,524288 3 200 > "$LOGS/bench_ring.log" 2>&1
      tail -14 "$LOGS/bench_ring.log" ;;
    sp_families)  # issues 17, 18, 20: the linear-time and sparse kinds trained on 2 GPUs
      [ "$NGPU" -ge 2 ] || { echo "== sp_families: needs 2 GPUs"; continue; }
      timeout "$(left)" bash tests/bench/run_sp_families.sh "$BUILD" > "$LOGS/sp_families.log" 2>&1
      tail -16 "$LOGS/sp_families.log" ;;
    train_2gpu)
      [ "$NGPU" -ge 2 ] || { echo "== train_2gpu: needs 2 GPUs"; continue; }
      timeout "$(( $(left) < 240 ? $(left) : 240 ))" mpirun -np 2 --bind-to none -x NCCL_NVLS_ENABLE \
        "$BUILD/trainers/lctx-train" configs/gpu-2-ring.yaml --set parallel.simulate=0 --set train.steps=30 \
        --set logging.every=5 --set eval.every=30 --set checkpoint.every=30 --out /tmp/lctx-gpu-2-ring \
        > "$LOGS/train_2gpu.log" 2>&1
      echo "rc=$?"
      tail -12 "$LOGS/train_2gpu.log" ;;
    *) echo "== $c: unknown check (see the header of $0)"; continue ;;
  esac
  echo "== $c: $(( $(date +%s) - t1 )) s"
done
echo "== total: $(( $(date +%s) - t0 )) s"
