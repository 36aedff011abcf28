// CUDA half of rng.h; compiled with -fmad=false so the transforms round like the CPU's.
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "core/philox.h"
#include "core/rng.h"

namespace lctx::detail {

namespace {

template <class T>
__global__ void rng_kernel(T* p, StridedLayout l, Distribution dist, uint64_t seed, uint64_t offset, double a,
                           double b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double r = dist == Distribution::uniform ? philox::uniform(seed, offset + i) * (b - a) + a
                                                   : philox::normal(seed, offset + i) * b + a;
    p[l.offset_in(i, n)] = cuda_convert<T>(r);
  }
}

}  // namespace

void cuda_rng_fill(Tensor& t, Distribution dist, uint64_t seed, uint64_t offset, double a, double b, Stream s) {
  const int64_t n = t.numel();
  const StridedLayout l = layout_of(t);
  LCTX_CUDA_CHECK(cudaSetDevice(t.device().index));
  const int grid = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  LCTX_DISPATCH_CUDA_ALL(t.dtype(), "rng", [&] {
    rng_kernel<<<grid, 256, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(t.raw()), l, dist, seed, offset, a, b, n);
  });
  LCTX_CUDA_CHECK_LAUNCH("rng_kernel");
}

}  // namespace lctx::detail
