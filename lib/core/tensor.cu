// CUDA strided copy (with dtype conversion), fill and add (Tensor::add_from, ops::residual)
// for Tensor.
#include <algorithm>
#include <limits>
#include <type_traits>

#include "core/cuda/launch.cuh"
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

// out = a + b, summed in double for f64 and in float otherwise, rounded once to To; a is laid out
// like out. kFlat: all contiguous (plain indexing), else through the layouts.
template <class To, class Ti, bool kFlat>
__global__ void add_kernel(To* out, const To* a, StridedLayout ol, const Ti* __restrict__ b, StridedLayout bl,
                           int64_t n) {
  using W = std::conditional_t<std::is_same_v<To, double>, double, float>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = kFlat ? i : ol.offset_in(i, n);
    out[o] = cuda_convert<To>(cuda_convert<W>(a[o]) + cuda_convert<W>(b[kFlat ? i : bl.offset_in(i, n)]));
  }
}

// Rows of w contiguous elements at one pitch (a slice of heads, of sequence rows...): the
// pitch in elements when t's coalesced layout l (n elements) has that form. Rows that overlap
// (a pitch below w, e.g. 0 for a repeated row) are not: the 2D copy refuses them.
bool rows_of(const StridedLayout& l, int64_t n, int64_t w, int64_t* pitch) {
  if (l.ndim <= 1 && (l.ndim == 0 || l.stride[0] == 1) && n % w == 0) {
    *pitch = w;
    return true;
  }
  if (l.ndim == 2 && l.stride[1] == 1 && l.shape[1] == w && l.stride[0] >= w) {
    *pitch = l.stride[0];
    return true;
  }
  return false;
}

}  // namespace

void cuda_copy(Tensor& dst, const Tensor& src, Stream s) {
  const int64_t n = dst.numel();
  const StridedLayout dl = layout_of(dst), sl = layout_of(src);
  set_device(dst);
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
      copy_kernel<D, scalar_t><<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
          static_cast<D*>(dst.raw()), dl, static_cast<const scalar_t*>(src.raw()), sl, n);
    });
  });
  LCTX_CUDA_CHECK_LAUNCH("copy_kernel");
}

void cuda_fill(Tensor& t, double value, Stream s) {
  const int64_t n = t.numel();
  const StridedLayout l = layout_of(t);
  set_device(t);
  LCTX_DISPATCH_CUDA_ALL(t.dtype(), "fill", [&] {
    const scalar_t v = cuda_convert<scalar_t>(value);
    fill_kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(static_cast<scalar_t*>(t.raw()), l, v, n);
  });
  LCTX_CUDA_CHECK_LAUNCH("fill_kernel");
}

void cuda_add(Tensor& out, const Tensor& a, const Tensor& b, Stream s) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const DType d = out.dtype();
  const bool half = d == DType::bf16 || d == DType::f16;
  const bool narrow = d == DType::f32 && (b.dtype() == DType::bf16 || b.dtype() == DType::f16);
  const bool into_half = half && b.dtype() == DType::f32;
  LCTX_CHECK(a.dtype() == d && (b.dtype() == d || narrow || into_half), "add: ", out.str(), " = ", a.str(), " + ",
             b.str(), " needs one dtype, bf16/f16 added into f32, or f32 added into bf16/f16");
  LCTX_CHECK(a.strides() == out.strides() || (a.is_contiguous() && out.is_contiguous()), "add: ", out.str(), " = ",
             a.str(), " + ", b.str(), ": a must be laid out like out");
  set_device(out);
  const bool flat = out.is_contiguous() && b.is_contiguous();
  const StridedLayout ol = layout_of(out), bl = layout_of(b);
  auto launch = [&]<class To, class Ti>() {
    auto kernel = flat ? add_kernel<To, Ti, true> : add_kernel<To, Ti, false>;
    kernel<<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        static_cast<To*>(out.raw()), static_cast<const To*>(a.raw()), ol, static_cast<const Ti*>(b.raw()), bl, n);
  };
  if (d == DType::f64) {
    launch.template operator()<double, double>();
  } else if (into_half) {
    LCTX_DISPATCH_CUDA_FLOAT(d, "add", [&] { launch.template operator()<scalar_t, float>(); });
  } else if (b.dtype() == d) {
    LCTX_DISPATCH_CUDA_FLOAT(d, "add", [&] { launch.template operator()<scalar_t, scalar_t>(); });
  } else {
    LCTX_DISPATCH_CUDA_FLOAT(b.dtype(), "add", [&] { launch.template operator()<float, scalar_t>(); });
  }
  LCTX_CUDA_CHECK_LAUNCH("add_kernel");
}

}  // namespace lctx::detail
