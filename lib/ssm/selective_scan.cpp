// The selective scan's public API (selective_scan.h): validates a call
// (selective_scan_params.cpp) and runs it on its device. Only the CPU implementation exists so
// far; the params refuse CUDA tensors until selective_scan.cu sits beside it.
#include "ssm/selective_scan.h"

#include "ssm/selective_scan_params.h"

namespace lctx::ssm {

ScanOutput selective_scan_forward(const ScanInputs& in, const ScanOptions& opts, Stream s) {
  ScanOutput out;
  const ScanParams p = selective_scan_forward_params("selective_scan_forward", in, opts, &out);
  (void)s;
  selective_scan_forward_cpu(p);
  return out;
}

ScanGrads selective_scan_backward(const ScanInputs& in, const Tensor& dy, const Tensor& d_final_state,
                                  const ScanOptions& opts, Stream s) {
  ScanGrads g;
  const ScanParams p = selective_scan_backward_params("selective_scan_backward", in, dy, d_final_state, opts, &g);
  (void)s;
  selective_scan_backward_cpu(p);
  return g;
}

}  // namespace lctx::ssm
