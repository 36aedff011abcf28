// The selective scan's public API (selective_scan.h): validates a call
// (selective_scan_params.cpp) and runs it on its device: the CPU implementation
// (selective_scan_reference.cpp) or the CUDA kernels (selective_scan.cu; a CPU-only build
// refuses CUDA tensors in the params).
#include "ssm/selective_scan.h"

#include "ssm/selective_scan_params.h"

namespace lctx::ssm {

ScanOutput selective_scan_forward(const ScanInputs& in, const ScanOptions& opts, Stream s) {
  ScanOutput out;
  const ScanParams p = selective_scan_forward_params("selective_scan_forward", in, opts, &out);
  (void)s;
  if (in.x.device().is_cpu()) {
    selective_scan_forward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    selective_scan_forward_cuda(p, s);
#endif
  }
  return out;
}

ScanGrads selective_scan_backward(const ScanInputs& in, const Tensor& dy, const Tensor& d_final_state,
                                  const ScanOptions& opts, Stream s) {
  ScanGrads g;
  const ScanParams p = selective_scan_backward_params("selective_scan_backward", in, dy, d_final_state, opts, &g);
  (void)s;
  if (in.x.device().is_cpu()) {
    selective_scan_backward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    selective_scan_backward_cuda(p, s);
#endif
  }
  return g;
}

}  // namespace lctx::ssm
