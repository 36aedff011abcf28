// Host-side launch helpers shared by lctx's kernels: the grid of a grid-stride loop, the block
// of a row kernel, making a tensor's device current before a launch, and the SM count. One policy for every
// area (core, ops, attn). Namespace lctx like the rest of core/cuda/; included only from .cu files.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/tensor.h"

namespace lctx {

// Blocks beyond which grid-stride loops take over (well above what a GPU keeps resident).
constexpr int kMaxGridBlocks = 65535 * 8;

// Blocks for n items, per_block of them per block (threads x items per thread): at least one
// (an empty launch stays valid), at most max_blocks (grid-stride loops cover the rest).
inline int grid_size(int64_t n, int per_block, int max_blocks = kMaxGridBlocks) {
  return static_cast<int>(std::clamp<int64_t>((n + per_block - 1) / per_block, 1, max_blocks));
}

// Threads per block for a row of `cols` elements: a power of two between 32 and `max`.
inline int row_threads(int64_t cols, int max = 1024) {
  int t = 32;
  while (t < max && t < cols) t *= 2;
  return t;
}

inline void set_device(const Tensor& t) { LCTX_CUDA_CHECK(cudaSetDevice(t.device().index)); }

// Streaming multiprocessors of `device` (kernels size split-K / segment grids by it), queried
// once per device and cached.
inline int sm_count(int device) {
  constexpr int kMaxDevices = 64;
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  LCTX_CHECK(device >= 0 && device < kMaxDevices, "sm_count: device ", device, " out of range");
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    LCTX_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace lctx
