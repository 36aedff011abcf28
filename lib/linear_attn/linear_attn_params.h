// Host/device contract of linear attention (linear_attn.h): raw pointers, element strides,
// shapes and options in one plain struct. linear_attn_params.cpp validates a call's tensors
// and builds it; linear_attn.cpp hands it to the CPU implementation
// (linear_attn_reference.cpp) or the CUDA launch site (linear_attn.cu) by the tensors' device.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/strided.h"  // LCTX_HD

namespace lctx {
class Tensor;
}

namespace lctx::linear_attn {

struct LinearAttnOptions;
struct LinearAttnInputs;
struct LinearAttnOutput;
struct LinearAttnGrads;

// The CPU limit on Dk and Dv: the backward keeps one Dk x (Dv + 1) state per chunk per task.
constexpr int kMaxHeadDimCpu = 1024;
// The CUDA limit on Dk (key tiles of 64, 128 or 256 rows in shared memory) and on Dv.
constexpr int kMaxDimKCuda = 256;
constexpr int kMaxDimVCuda = 1024;

struct LinearAttnParams {
  // q/dq [B, S, Hq, Dk], k/dk [B, S, Hk, Dk], v/dv [B, S, Hv, Dv], o/dout [B, S, H, Dv];
  // states [B, H, Dk, state_cols()] contiguous.
  int64_t batch = 0, seqlen = 0;
  int heads = 0, heads_q = 0, heads_k = 0, heads_v = 0, dim_k = 0, dim_v = 0;
  DType dtype = DType::f32;        // q, k, v, o, dout, dq, dk, dv
  DType state_dtype = DType::f32;  // wide_dtype(dtype): states, log-decays and their gradients

  // Strides in elements (b, s, h); head_dim is contiguous.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_stride[3] = {}, k_stride[3] = {}, v_stride[3] = {};

  bool causal = true;
  bool normalize = false;
  double eps = 0.0;
  int64_t chunk = 64;
  // log lambda: [H] (decay_per_token false) or [B, S, H] with strides (b, s) and head stride 1;
  // nullptr: no decay.
  const void* log_decay = nullptr;
  bool decay_per_token = false;
  int64_t decay_stride[2] = {};
  const void* state0 = nullptr;  // nullptr: zeros

  // Forward outputs.
  void* o = nullptr;
  int64_t o_stride[3] = {};
  void* final_state = nullptr;

  // Backward: inputs dout, d_final_state (nullptr: zeros); contiguous outputs dq, dk, dv,
  // d_state0 and d_log_decay (nullptr: not wanted; [H] or [B, S, H] like log_decay).
  const void* dout = nullptr;
  int64_t dout_stride[3] = {};
  const void* d_final_state = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  void* d_state0 = nullptr;
  void* d_log_decay = nullptr;

  LCTX_HD int state_cols() const { return dim_v + (normalize ? 1 : 0); }
  LCTX_HD int64_t state_size() const { return static_cast<int64_t>(dim_k) * state_cols(); }
};

// Validates the inputs and options of a call (and dout, d_final_state for the backward) and
// builds its params. The forward allocates *out, the backward *g (linear_attn.h).
LinearAttnParams linear_attn_forward_params(const char* op, const LinearAttnInputs& in, const LinearAttnOptions& opts,
                                            LinearAttnOutput* out);
LinearAttnParams linear_attn_backward_params(const char* op, const LinearAttnInputs& in, const Tensor& dout,
                                             const Tensor& d_final_state, const LinearAttnOptions& opts,
                                             LinearAttnGrads* g);

// CPU implementation (linear_attn_reference.cpp): f32/f64, causal (chunked) and non-causal.
void linear_attn_forward_cpu(const LinearAttnParams& p);
void linear_attn_backward_cpu(const LinearAttnParams& p);

#ifdef LCTX_HAVE_CUDA
// CUDA implementation (linear_attn.cu): bf16/f16/f32 inputs, Dk <= kMaxDimKCuda, fp32 states.
// Stream-ordered: its fp32 scratch comes from the pool on `s`; the host never blocks.
void linear_attn_forward_cuda(const LinearAttnParams& p, Stream s);
void linear_attn_backward_cuda(const LinearAttnParams& p, Stream s);
#endif

}  // namespace lctx::linear_attn
