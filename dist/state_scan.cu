// CUDA half of state_scan (see state_scan.h): one thread per state element runs the steps in
// order (detail::scan_element, shared with the CPU loop); the da reduction uses one warp per
// row, lanes striding over m, summed with shuffles in a fixed order (deterministic).
#include "core/cuda_check.h"
#include "dist/state_scan.h"

namespace lctx::dist::detail {

namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void scan_kernel(ScanParams p) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < p.rows * p.m) scan_element<T>(p, i);
}

template <class T>
__global__ void row_dot_kernel(RowDotParams p) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.rows) return;  // whole warps leave together
  const T* x = static_cast<const T*>(p.x) + row * p.m;
  const T* y = static_cast<const T*>(p.y) + row * p.m;
  T acc = 0;
  for (int64_t k = lane; k < p.m; k += 32) acc += x[k] * y[k];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) static_cast<T*>(p.out)[row] = acc;
}

unsigned blocks_for(int64_t threads) { return static_cast<unsigned>((threads + kThreads - 1) / kThreads); }

}  // namespace

void scan_cuda(const ScanParams& p, Stream s) {
  LCTX_CUDA_CHECK(cudaSetDevice(p.device));
  const unsigned grid = blocks_for(p.rows * p.m);
  if (p.dtype == DType::f64) scan_kernel<double><<<grid, kThreads, 0, cuda_stream(s)>>>(p);
  else scan_kernel<float><<<grid, kThreads, 0, cuda_stream(s)>>>(p);
  LCTX_CUDA_CHECK_LAUNCH("state_scan kernel");
}

void row_dot_cuda(const RowDotParams& p, Stream s) {
  LCTX_CUDA_CHECK(cudaSetDevice(p.device));
  const unsigned grid = blocks_for(p.rows * 32);
  if (p.dtype == DType::f64) row_dot_kernel<double><<<grid, kThreads, 0, cuda_stream(s)>>>(p);
  else row_dot_kernel<float><<<grid, kThreads, 0, cuda_stream(s)>>>(p);
  LCTX_CUDA_CHECK_LAUNCH("state_scan row_dot kernel");
}

}  // namespace lctx::dist::detail
