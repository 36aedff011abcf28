// Linear attention's public API (linear_attn.h): validates a call (linear_attn_params.cpp) and
// runs it on its device: the CPU implementation (linear_attn_reference.cpp) or the CUDA kernels
// (linear_attn.cu; a build without CUDA says so).
#include "linear_attn/linear_attn.h"

#include "linear_attn/linear_attn_params.h"

namespace lctx::linear_attn {

LinearAttnOutput linear_attn_forward(const LinearAttnInputs& in, const LinearAttnOptions& opts, Stream s) {
  const char* op = "linear_attn_forward";
  LinearAttnOutput out;
  const LinearAttnParams p = linear_attn_forward_params(op, in, opts, &out);
  if (in.q.device().is_cpu()) {
    linear_attn_forward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    linear_attn_forward_cuda(p, s);
#else
    LCTX_FAIL(op, ": q ", in.q.str(), " is a CUDA tensor but lctx was built without CUDA");
#endif
  }
  (void)s;
  return out;
}

LinearAttnGrads linear_attn_backward(const LinearAttnInputs& in, const Tensor& dout, const Tensor& d_final_state,
                                     const LinearAttnOptions& opts, Stream s) {
  const char* op = "linear_attn_backward";
  LinearAttnGrads g;
  const LinearAttnParams p = linear_attn_backward_params(op, in, dout, d_final_state, opts, &g);
  if (in.q.device().is_cpu()) {
    linear_attn_backward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    linear_attn_backward_cuda(p, s);
#else
    LCTX_FAIL(op, ": q ", in.q.str(), " is a CUDA tensor but lctx was built without CUDA");
#endif
  }
  (void)s;
  return g;
}

}  // namespace lctx::linear_attn
