// Host/device contract of the selective scan (selective_scan.h): raw pointers, shapes and
// options in one plain struct. selective_scan_params.cpp validates a call's tensors and builds
// it; selective_scan.cpp hands it to the CPU implementation (selective_scan_reference.cpp) or
// to the CUDA kernels (selective_scan.cu) by the tensors' device.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace lctx {
class Tensor;
struct Stream;
}

namespace lctx::ssm {

struct ScanInputs;
struct ScanOptions;
struct ScanOutput;
struct ScanGrads;

// The CPU limit on d_state: the backward keeps chunk x d_state states per task.
constexpr int kMaxStateCpu = 256;
// The CUDA limit: a channel's 32 lanes hold at most 8 states each.
constexpr int kMaxStateCuda = 256;

struct ScanParams {
  // Contiguous: x, dt, z, y, dy [B, S, D]; B, C [B, S, G, N]; A [D, N]; D, dt_bias [D];
  // states [B, D, N]; gradients like their inputs.
  int64_t batch = 0, seqlen = 0;
  int dim = 0, groups = 0, dstate = 0;
  DType dtype = DType::f32;  // x, dt, B, C, z, y and their gradients
  DType wide = DType::f32;   // wide_dtype(dtype): A, D, dt_bias, states and their gradients
  bool softplus = true;
  int64_t chunk = 128;

  const void* x = nullptr;
  const void* dt = nullptr;
  const void* A = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const void* D = nullptr;        // nullptr: no skip term
  const void* z = nullptr;        // nullptr: no gate
  const void* dt_bias = nullptr;  // nullptr: zeros
  const void* state0 = nullptr;   // nullptr: zeros

  // Forward outputs.
  void* y = nullptr;
  void* final_state = nullptr;

  // Backward: inputs dy, d_final_state (nullptr: zeros); outputs (nullptr where the input is
  // absent: dD, dz, d_dt_bias).
  const void* dy = nullptr;
  const void* d_final_state = nullptr;
  void* dx = nullptr;
  void* d_dt = nullptr;
  void* dA = nullptr;
  void* dB = nullptr;
  void* dC = nullptr;
  void* dD = nullptr;
  void* dz = nullptr;
  void* d_dt_bias = nullptr;
  void* d_state0 = nullptr;
};

// Validates the inputs and options of a call (and dy, d_final_state for the backward) and
// builds its params. The forward allocates *out, the backward *g (selective_scan.h).
ScanParams selective_scan_forward_params(const char* op, const ScanInputs& in, const ScanOptions& opts,
                                         ScanOutput* out);
ScanParams selective_scan_backward_params(const char* op, const ScanInputs& in, const Tensor& dy,
                                          const Tensor& d_final_state, const ScanOptions& opts, ScanGrads* g);

// CPU implementation (selective_scan_reference.cpp): f32/f64.
void selective_scan_forward_cpu(const ScanParams& p);
void selective_scan_backward_cpu(const ScanParams& p);

// CUDA implementation (selective_scan.cu): bf16/f16/f32 tensors on the current device, the
// scan in fp32; stream-ordered on s.
void selective_scan_forward_cuda(const ScanParams& p, Stream s);
void selective_scan_backward_cuda(const ScanParams& p, Stream s);

}  // namespace lctx::ssm
