// CUDA strided copy (with dtype conversion), fill and accumulate (add_from) for Tensor.
#include <algorithm>
#include <limits>

#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "core/strided.h"
#include "core/tensor.h"

namespace lctx::detail {

namespace {

template <class D, class S>
__global__ void copy_kernel(D* dst, StridedLayout dl, const S* src, StridedLayout sl, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[dl.offset_in(i, n)] = cuda_convert<D>(src[sl.offset_in(i, n)]);
}

template <class T>
__global__ void fill_kernel(T* dst, StridedLayout dl, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[dl.offset_in(i, n)] = value;
}

template <class D, class S>
__global__ void add_kernel(D* dst, StridedLayout dl, const S* src, StridedLayout sl, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[dl.offset_in(i, n)] += cuda_convert<D>(src[sl.offset_in(i, n)]);
}

// Rows of w contiguous elements at one pitch (a slice of heads, of sequence rows...): the
// pitch in elements when t's coalesced layout l (n elements) has that form.
bool rows_of(const StridedLayout& l, int64_t n, int64_t w, int64_t* pitch) {
  if (l.ndim <= 1 && (l.ndim == 0 || l.stride[0] == 1) && n % w == 0) {
    *pitch = w;
    return true;
  }
  if (l.ndim == 2 && l.stride[1] == 1 && l.shape[1] == w) {
    *pitch = l.stride[0];
    return true;
  }
  return false;
}

int grid_for(int64_t n, int threads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535 * 4));
}

}  // namespace

void cuda_copy(Tensor& dst, const Tensor& src, Stream s) {
  const int64_t n = dst.numel();
  const StridedLayout dl = layout_of(dst), sl = layout_of(src);
  LCTX_CUDA_CHECK(cudaSetDevice(dst.device().index));
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    LCTX_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice, cuda_stream(s)));
    return;
  }
  // Same dtype, rows contiguous on both sides: one 2D memcpy (full bandwidth) instead of the
  // element-wise kernel (2-byte accesses for bf16), for pitches the 2D copy takes (< 2 GiB).
  const int64_t w = dl.ndim == 2 ? dl.shape[1] : sl.ndim == 2 ? sl.shape[1] : 0;
  const int64_t es = static_cast<int64_t>(dtype_size(dst.dtype()));
  int64_t dp = 0, sp = 0;
  if (dst.dtype() == src.dtype() && w > 0 && rows_of(dl, n, w, &dp) && rows_of(sl, n, w, &sp) &&
      std::max(dp, sp) * es <= std::numeric_limits<int32_t>::max()) {
    LCTX_CUDA_CHECK(cudaMemcpy2DAsync(dst.raw(), dp * es, src.raw(), sp * es, w * es, n / w,
                                      cudaMemcpyDeviceToDevice, cuda_stream(s)));
    return;
  }
  LCTX_DISPATCH_CUDA_ALL(dst.dtype(), "copy", [&] {
    using D = scalar_t;
    LCTX_DISPATCH_CUDA_ALL(src.dtype(), "copy", [&] {
      copy_kernel<D, scalar_t><<<grid_for(n, 256), 256, 0, cuda_stream(s)>>>(
          static_cast<D*>(dst.raw()), dl, static_cast<const scalar_t*>(src.raw()), sl, n);
    });
  });
  LCTX_CUDA_CHECK_LAUNCH("copy_kernel");
}

void cuda_fill(Tensor& t, double value, Stream s) {
  const int64_t n = t.numel();
  const StridedLayout l = layout_of(t);
  LCTX_CUDA_CHECK(cudaSetDevice(t.device().index));
  LCTX_DISPATCH_CUDA_ALL(t.dtype(), "fill", [&] {
    const scalar_t v = cuda_convert<scalar_t>(value);
    fill_kernel<<<grid_for(n, 256), 256, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(t.raw()), l, v, n);
  });
  LCTX_CUDA_CHECK_LAUNCH("fill_kernel");
}

void cuda_add(Tensor& dst, const Tensor& src, Stream s) {
  const int64_t n = dst.numel();
  const StridedLayout dl = layout_of(dst), sl = layout_of(src);
  LCTX_CUDA_CHECK(cudaSetDevice(dst.device().index));
  auto launch = [&]<class D, class S>() {
    add_kernel<D, S><<<grid_for(n, 256), 256, 0, cuda_stream(s)>>>(static_cast<D*>(dst.raw()), dl,
                                                                    static_cast<const S*>(src.raw()), sl, n);
  };
  if (dst.dtype() == DType::f64) launch.template operator()<double, double>();
  else if (src.dtype() == DType::bf16) launch.template operator()<float, __nv_bfloat16>();
  else if (src.dtype() == DType::f16) launch.template operator()<float, __half>();
  else launch.template operator()<float, float>();
  LCTX_CUDA_CHECK_LAUNCH("add_kernel");
}

}  // namespace lctx::detail
