// One warp per row: every lane scans a strided part of the row, then the warp keeps the
// largest value, and the smallest index among equal values (the CPU's first-index rule).
#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

template <class T>
__global__ void argmax_kernel(int32_t* out, const T* __restrict__ x, int64_t rows, int64_t v) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; row < rows; row += warps) {
    const T* r = x + row * v;
    float best = -INFINITY;
    int64_t idx = v;  // none yet
    for (int64_t j = lane; j < v; j += 32) {
      const float e = to_f32(r[j]);
      if (idx == v || e > best) {
        best = e;
        idx = j;
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const float ob = __shfl_down_sync(0xffffffffu, best, off);
      const int64_t oi = __shfl_down_sync(0xffffffffu, idx, off);
      if (oi < v && (idx == v || ob > best || (ob == best && oi < idx))) {
        best = ob;
        idx = oi;
      }
    }
    if (lane == 0) out[row] = static_cast<int32_t>(idx);
  }
}

}  // namespace

void argmax_rows(Tensor& out, const Tensor& x, Stream s) {
  const int64_t rows = detail::rows_of(x), v = x.size(-1);
  set_device(x);
  LCTX_DISPATCH_CUDA_FLOAT(x.dtype(), "argmax_rows", [&] {
    argmax_kernel<<<grid_size(rows * 32, 256), 256, 0, cuda_stream(s)>>>(out.data<int32_t>(),
                                                                        static_cast<const scalar_t*>(x.raw()), rows, v);
  });
  LCTX_CUDA_CHECK_LAUNCH("argmax_kernel");
}

}  // namespace lctx::ops::cuda
