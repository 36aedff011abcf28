#include "core/cuda/launch.cuh"
#include "core/cuda_types.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

// The param copy's dtype is a runtime switch (not a template) to keep instantiations few.
template <class G>
__global__ void adamw_kernel(void* param, DType pdt, float* __restrict__ master, float* __restrict__ m,
                             float* __restrict__ v, const G* __restrict__ grad, int64_t n, AdamWScalars a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f32(grad[i]) * a.grad_scale;
    float p = master[i] * (1.0f - a.lr * a.weight_decay);
    const float mi = a.beta1 * m[i] + (1.0f - a.beta1) * g;
    const float vi = a.beta2 * v[i] + (1.0f - a.beta2) * g * g;
    p -= a.step_size * mi / (sqrtf(vi) * a.inv_sqrt_bc2 + a.eps);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param) {
      if (pdt == DType::bf16) static_cast<__nv_bfloat16*>(param)[i] = __float2bfloat16_rn(p);
      else if (pdt == DType::f16) static_cast<__half*>(param)[i] = __float2half_rn(p);
      else static_cast<float*>(param)[i] = p;
    }
  }
}

}  // namespace

void adamw(Tensor& param, Tensor& master, Tensor& m, Tensor& v, const Tensor& grad, const AdamWScalars& a, Stream s) {
  const int64_t n = grad.numel();
  if (n == 0) return;
  set_device(grad);
  void* pp = param.defined() ? param.raw() : nullptr;
  const DType pdt = param.defined() ? param.dtype() : DType::f32;
  LCTX_DISPATCH_CUDA_FLOAT(grad.dtype(), "adamw_update", [&] {
    adamw_kernel<scalar_t><<<grid_size(n, 256), 256, 0, cuda_stream(s)>>>(
        pp, pdt, master.data<float>(), m.data<float>(), v.data<float>(), static_cast<const scalar_t*>(grad.raw()), n,
        a);
  });
  LCTX_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace lctx::ops::cuda
