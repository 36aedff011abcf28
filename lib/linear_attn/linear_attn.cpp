// Linear attention's public API (linear_attn.h): validates a call (linear_attn_params.cpp) and
// runs it on its device. Only the CPU implementation exists so far; make_params refuses CUDA
// tensors until linear_attn.cu sits beside it.
#include "linear_attn/linear_attn.h"

#include "linear_attn/linear_attn_params.h"

namespace lctx::linear_attn {

LinearAttnOutput linear_attn_forward(const LinearAttnInputs& in, const LinearAttnOptions& opts, Stream s) {
  LinearAttnOutput out;
  const LinearAttnParams p = linear_attn_forward_params("linear_attn_forward", in, opts, &out);
  (void)s;
  linear_attn_forward_cpu(p);
  return out;
}

LinearAttnGrads linear_attn_backward(const LinearAttnInputs& in, const Tensor& dout, const Tensor& d_final_state,
                                     const LinearAttnOptions& opts, Stream s) {
  LinearAttnGrads g;
  const LinearAttnParams p = linear_attn_backward_params("linear_attn_backward", in, dout, d_final_state, opts, &g);
  (void)s;
  linear_attn_backward_cpu(p);
  return g;
}

}  // namespace lctx::linear_attn
