// General matrix multiply on row-major 2-D tensors: c = alpha * op(a) @ op(b) + beta * c.
// The building block of linear (forward and both backward products) and of the benchmarks.
// CPU: cache-blocked, OpenMP-parallel loop nest (f32, f64), accumulating in the input type.
// CUDA: cuBLASLt with fp32 accumulation; a, b in f32, bf16 or f16 and c in the same dtype or
// f32 (bf16 x bf16 -> f32 is how weight gradients are accumulated). One cuBLASLt handle and a
// 32 MiB workspace (from the caching allocator) per device and thread, created on first use,
// so simulated ranks running as threads never share them; the chosen algorithm is cached per
// problem shape.
#pragma once
#include "core/tensor.h"

namespace lctx::ops {

enum class Trans { none, transpose };

// op(a): [M, K], op(b): [K, N], c: [M, N]; all contiguous and on one device. With beta == 0 the
// previous contents of c are ignored (NaN-safe).
void matmul(Tensor& c, const Tensor& a, const Tensor& b, Trans ta = Trans::none, Trans tb = Trans::none,
            float alpha = 1.0f, float beta = 0.0f, Stream s = {});

namespace detail {
struct GemmArgs {
  int64_t m, n, k;
  Trans ta, tb;
  float alpha, beta;
};
}  // namespace detail

}  // namespace lctx::ops
