#include "ops/cuda_utils.cuh"
#include "ops/residual.h"

namespace lctx::ops::detail {

namespace {
template <class To, class Ti>
__global__ void add_kernel(To* out, const To* a, const Ti* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<To>((a ? to_f32(a[i]) : 0.0f) + to_f32(b[i]));
}

template <class To, class Ti>
void launch(Tensor& out, const Tensor* a, const Tensor& b, int64_t n, Stream s) {
  add_kernel<To, Ti><<<grid_1d(n, 256), 256, 0, cuda_stream(s)>>>(
      static_cast<To*>(out.raw()), a ? static_cast<const To*>(a->raw()) : nullptr,
      static_cast<const Ti*>(b.raw()), n);
}
}  // namespace

void cuda_add(Tensor& out, const Tensor* a, const Tensor& b, Stream s) {
  const int64_t n = out.numel();
  if (n == 0) return;
  set_device(out);
  if (out.dtype() == b.dtype()) {
    LCTX_DISPATCH_CUDA_FLOAT(b.dtype(), "add", [&] { launch<scalar_t, scalar_t>(out, a, b, n, s); });
  } else {
    LCTX_CHECK(out.dtype() == DType::f32, "add: ", out.str(), " += ", b.str(), " needs matching dtypes or f32 out");
    LCTX_DISPATCH_CUDA_FLOAT(b.dtype(), "add", [&] { launch<float, scalar_t>(out, a, b, n, s); });
  }
  LCTX_CUDA_CHECK_LAUNCH("add_kernel");
}

}  // namespace lctx::ops::detail

