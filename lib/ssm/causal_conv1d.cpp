// The causal conv1d's public API (causal_conv1d.h): validates a call (causal_conv1d_params.cpp)
// and runs it on its device. Only the CPU implementation exists so far; the params refuse
// CUDA tensors until causal_conv1d.cu sits beside it.
#include "ssm/causal_conv1d.h"

#include "ssm/causal_conv1d_params.h"

namespace lctx::ssm {

Tensor causal_conv1d_forward(const ConvInputs& in, const ConvOptions& opts, Stream s) {
  Tensor y;
  const ConvParams p = causal_conv1d_forward_params("causal_conv1d_forward", in, opts, &y);
  (void)s;
  causal_conv1d_forward_cpu(p);
  return y;
}

ConvGrads causal_conv1d_backward(const ConvInputs& in, const Tensor& dy, const ConvOptions& opts, Stream s) {
  ConvGrads g;
  const ConvParams p = causal_conv1d_backward_params("causal_conv1d_backward", in, dy, opts, &g);
  (void)s;
  causal_conv1d_backward_cpu(p);
  return g;
}

}  // namespace lctx::ssm
