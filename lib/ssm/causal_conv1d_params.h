// Host/device contract of the causal depthwise conv1d (causal_conv1d.h): pointers, shapes and
// options in one plain struct. causal_conv1d_params.cpp validates a call and builds it;
// causal_conv1d.cpp runs the CPU implementation (causal_conv1d_reference.cpp) or the CUDA
// kernels (causal_conv1d.cu) by the tensors' device.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace lctx {
class Tensor;
struct Stream;
}

namespace lctx::ssm {

struct ConvInputs;
struct ConvOptions;
struct ConvGrads;

struct ConvParams {
  // Contiguous: x, y, dy, dx [B, S, C]; history, d_history [B, W-1, C]; weight [C, W]; bias [C].
  int64_t batch = 0, seqlen = 0;
  int channels = 0, width = 0;
  DType dtype = DType::f32;  // x, history, y and their gradients
  DType wide = DType::f32;   // weight, bias and their gradients
  bool silu = false;

  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;     // nullptr: none
  const void* history = nullptr;  // nullptr: zeros
  void* y = nullptr;              // forward output

  // Backward: input dy; outputs (d_bias nullptr without a bias).
  const void* dy = nullptr;
  void* dx = nullptr;
  void* dweight = nullptr;
  void* dbias = nullptr;
  void* d_history = nullptr;
};

// Validates a call (and dy for the backward) and builds its params; allocates *y or *g.
ConvParams causal_conv1d_forward_params(const char* op, const ConvInputs& in, const ConvOptions& opts, Tensor* y);
ConvParams causal_conv1d_backward_params(const char* op, const ConvInputs& in, const Tensor& dy,
                                         const ConvOptions& opts, ConvGrads* g);

// CPU implementation (causal_conv1d_reference.cpp): f32/f64.
void causal_conv1d_forward_cpu(const ConvParams& p);
void causal_conv1d_backward_cpu(const ConvParams& p);

// CUDA implementation (causal_conv1d.cu): bf16/f16/f32 activations, f32 weights; on s.
void causal_conv1d_forward_cuda(const ConvParams& p, Stream s);
void causal_conv1d_backward_cuda(const ConvParams& p, Stream s);

}  // namespace lctx::ssm
