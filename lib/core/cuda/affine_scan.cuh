// The affine scan of one element over the pieces of a sequence, in place: the combine of
// dist/state_scan.h run on the GPU between the chunk kernels of linear_attn and selective_scan
// (their splits / segments). Namespace lctx like the rest of core/cuda/; included only from .cu
// files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lctx {

// x_{k+1} = a_k x_k + e_k over k = 0 .. n-1 (n-1 .. 0 with `reverse`) from x_0 = x: slot(k)
// (a float&) holds e_k and is left holding the x entering step k, decay(k) gives a_k; returns
// x after the last step. The e_k and a_k are read kBatch at a time before any slot is written,
// so a thread waits for one memory round trip per batch rather than one per step.
template <int kBatch = 8, class Slot, class Decay>
__device__ __forceinline__ float affine_scan_in_place(float x, int64_t n, bool reverse, Slot&& slot, Decay&& decay) {
  for (int64_t i0 = 0; i0 < n; i0 += kBatch) {
    float e[kBatch], a[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t k = reverse ? n - 1 - (i0 + j) : i0 + j;
      const bool live = i0 + j < n;
      e[j] = live ? slot(k) : 0.0f;
      a[j] = live ? decay(k) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (i0 + j >= n) break;
      slot(reverse ? n - 1 - (i0 + j) : i0 + j) = x;
      x = a[j] * x + e[j];
    }
  }
  return x;
}

}  // namespace lctx
