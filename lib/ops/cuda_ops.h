// The CUDA halves of the lctx::ops ops (defined in the .cu files), declared in one place and
// in every build, and LCTX_OPS_CUDA, the one way an op's .cpp reaches them:
//
//   if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::gelu_forward(out, x, s));
//
// In a CUDA build the macro is the call; in a CPU-only build it throws the lctx::Error
// "<op>: <tensor> is a CUDA tensor but lctx was built without CUDA" (the call is then only
// type-checked, never linked). Each half gets validated tensors on one device. residual's
// half is core's cuda_add (core/strided.h), shared with Tensor::add_from. Internal to lctx::ops.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "ops/blend.h"
#include "ops/common.h"
#include "ops/cross_entropy.h"
#include "ops/gate_mix.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/row_pool.h"

#ifdef LCTX_HAVE_CUDA
#define LCTX_OPS_CUDA(op, t, call) (call)
#else
#define LCTX_OPS_CUDA(op, t, call) (::lctx::ops::detail::fail_no_cuda<decltype(call)>(op, t))
#endif

namespace lctx::ops::cuda {

// AdamW on fp32 master weights and moments; the bias corrections folded in on the host.
struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};
void adamw(Tensor& param, Tensor& master, Tensor& m, Tensor& v, const Tensor& grad, const AdamWScalars& a, Stream s);

void argmax_rows(Tensor& out, const Tensor& x, Stream s);

// Column reductions over a [rows, cols] activation gradient, as used by the weight/bias
// gradients of the norms and of linear: out[c] = sum_r dy[r,c] * f(r,c), in fp32, in a fixed
// order (deterministic: per-block partial sums, then an ordered sum of the partials). CUDA only:
// the CPU references reduce inline.
enum class ColReduce {
  sum,          // f = 1                                (bias gradients)
  x_rstd,       // f = x[r,c] * rstd[r]                 (RMSNorm weight)
  x_mean_rstd,  // f = (x[r,c] - mean[r]) * rstd[r]     (LayerNorm weight)
};
// dy, x: contiguous, same dtype (f32/bf16/f16); mean, rstd: f32 [rows] (undefined when unused);
// out: f32 [cols], overwritten or accumulated into.
void col_reduce(Tensor& out, ColReduce kind, const Tensor& dy, const Tensor& x, const Tensor& mean,
                const Tensor& rstd, int64_t rows, int64_t cols, GradMode mode, Stream s);

// dlogits undefined: losses only.
void cross_entropy(Tensor& losses, Tensor& mean_loss, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                   const CrossEntropyOptions& opts, Stream s);

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& w, Stream s);
void embedding_backward(Tensor& dw, const Tensor& ids, const Tensor& dout, GradMode mode, Stream s);

// gate_mix.h: o = sum_t sigmoid(z_t) o_t per row and head; and its backward.
void gate_mix_forward(Tensor& o, std::span<const Tensor> branches, const Tensor& logits, Stream s);
void gate_mix_backward(std::span<const Tensor> d_branches, Tensor& d_logits, const Tensor& d_o,
                       std::span<const Tensor> branches, const Tensor& logits, Stream s);

void gelu_forward(Tensor& out, const Tensor& x, Stream s);
void gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, Stream s);

// log_sigmoid.h: y in wide_dtype(x); dx in x's dtype or the wide dtype.
void log_sigmoid_forward(Tensor& y, const Tensor& x, Stream s);
void log_sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& x, Stream s);

double sum_squares(std::span<const Tensor> grads, Stream s);
void scale(const Tensor& t, double scale, Stream s);

// y[r, :] = bias for every row (linear's bias, before the GEMM adds x W^T onto it).
void broadcast_rows(Tensor& y, const Tensor& bias, int64_t rows, int64_t cols, Stream s);

void matmul(Tensor& c, const Tensor& a, const Tensor& b, const detail::GemmArgs& g, Stream s);

// blend.h: o = (1 - r) a + r b per row, r = sigmoid(logit) or a ratio; and its backward.
void blend_forward(Tensor& o, const Tensor& a, const Tensor& b, const BlendWeight& w, Stream s);
void blend_backward(BlendGrads& g, const Tensor& d_o, const Tensor& a, const Tensor& b, const BlendWeight& w,
                    Stream s);

// negative_exp.h: y = -exp(x) in wide_dtype(x); dx = dy * y.
void negative_exp_forward(Tensor& y, const Tensor& x, Stream s);
void negative_exp_backward(Tensor& dx, const Tensor& dy, const Tensor& y, Stream s);

void norm_forward(detail::NormKind kind, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                  const Tensor& b, float eps, Stream s);
void norm_backward(detail::NormKind kind, Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                   const Tensor& w, const Tensor& mean, const Tensor& rstd, GradMode mode, Stream s);

// row_pool.h: rows summed into buckets (f32), and the transpose.
void row_pool_forward(Tensor& buckets, const Tensor& rows, const RowBuckets& ix, double scale, Stream s);
void row_pool_backward(Tensor& rows, const Tensor& buckets, const RowBuckets& ix, double scale, Stream s);

// sign = +1 forward, -1 backward.
void rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta, int sign, Stream s);

void swiglu_forward(Tensor& out, const Tensor& in, int64_t rows, int64_t f, Stream s);
void swiglu_backward(Tensor& din, const Tensor& dout, const Tensor& in, int64_t rows, int64_t f, Stream s);

}  // namespace lctx::ops::cuda
