// The one kernel the cuDNN backend needs besides cuDNN: adding its bf16/f16 gradients into
// the caller's fp32 accumulators (GradMode::accumulate, ring attention's dK/dV and dQ).
#include "attn/flash_cudnn.h"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "core/strided.h"

namespace lctx::attn::detail {
namespace {

template <class S>
__global__ void add_into_kernel(float* dst, StridedLayout dl, const S* src, StridedLayout sl, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[dl.offset_in(i, n)] += to_f32(src[sl.offset_in(i, n)]);
}

}  // namespace

void add_into_cuda(const Tensor& dst, const Tensor& src, Stream s) {
  LCTX_CHECK(dst.dtype() == DType::f32 && dst.shape() == src.shape(), "add_into: ", dst.str(), " += ", src.str());
  const int64_t n = dst.numel();
  if (n == 0) return;
  const StridedLayout dl = lctx::detail::layout_of(dst), sl = lctx::detail::layout_of(src);
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 65535 * 4));
  if (src.dtype() == DType::bf16)
    add_into_kernel<<<blocks, 256, 0, cuda_stream(s)>>>(dst.data<float>(), dl,
                                                        static_cast<const __nv_bfloat16*>(src.raw()), sl, n);
  else if (src.dtype() == DType::f16)
    add_into_kernel<<<blocks, 256, 0, cuda_stream(s)>>>(dst.data<float>(), dl, static_cast<const __half*>(src.raw()),
                                                        sl, n);
  else
    LCTX_FAIL("add_into: source ", src.str(), " must be bf16 or f16");
  LCTX_CUDA_CHECK_LAUNCH("add_into_kernel");
}

}  // namespace lctx::attn::detail
