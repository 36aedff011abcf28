// What every CUDA benchmark here shares: CUDA-event timing (the median of `reps` timed calls
// after `warmup` untimed ones, all on the legacy default stream the benchmarks launch on) and
// normally distributed inputs on the GPU.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/cuda_check.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lctx::bench {

inline double median_ms(const std::function<void()>& fn, int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  LCTX_CUDA_CHECK(cudaEventCreate(&a));
  LCTX_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    LCTX_CUDA_CHECK(cudaEventRecord(a));
    fn();
    LCTX_CUDA_CHECK(cudaEventRecord(b));
    LCTX_CUDA_CHECK(cudaEventSynchronize(b));
    LCTX_CUDA_CHECK(cudaEventElapsedTime(&ms[i], a, b));
  }
  LCTX_CUDA_CHECK(cudaEventDestroy(a));
  LCTX_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

inline Tensor random_cuda(const Shape& s, DType dt, uint64_t seed, double mean = 0.0, double std = 1.0) {
  Tensor t = Tensor::empty(s, dt, Device::cuda());
  rng_normal(t, seed, 0, mean, std);
  return t;
}

}  // namespace lctx::bench
