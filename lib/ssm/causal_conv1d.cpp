// The causal conv1d's public API (causal_conv1d.h): validates a call (causal_conv1d_params.cpp)
// and runs it on its device: the CPU implementation (causal_conv1d_reference.cpp) or the CUDA
// kernels (causal_conv1d.cu; a CPU-only build refuses CUDA tensors in the params).
#include "ssm/causal_conv1d.h"

#include "ssm/causal_conv1d_params.h"

namespace lctx::ssm {

Tensor causal_conv1d_forward(const ConvInputs& in, const ConvOptions& opts, Stream s) {
  Tensor y;
  const ConvParams p = causal_conv1d_forward_params("causal_conv1d_forward", in, opts, &y);
  (void)s;
  if (in.x.device().is_cpu()) {
    causal_conv1d_forward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    causal_conv1d_forward_cuda(p, s);
#endif
  }
  return y;
}

ConvGrads causal_conv1d_backward(const ConvInputs& in, const Tensor& dy, const ConvOptions& opts, Stream s) {
  ConvGrads g;
  const ConvParams p = causal_conv1d_backward_params("causal_conv1d_backward", in, dy, opts, &g);
  (void)s;
  if (in.x.device().is_cpu()) {
    causal_conv1d_backward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    causal_conv1d_backward_cuda(p, s);
#endif
  }
  return g;
}

}  // namespace lctx::ssm
