// Linformer (linformer.h): the sequence projections X~ = P[:, :S] X and their backward are
// ops::matmul per batch row; the attention over the projected rows is attn::flash.
#include "linear_attn/linformer.h"

#include "attn/flash.h"
#include "ops/matmul.h"

namespace lctx::linear_attn {

namespace {

void check_inputs(const char* op, const LinformerInputs& in) {
  const Tensor &q = in.q, &k = in.k, &v = in.v;
  LCTX_CHECK(q.defined() && k.defined() && v.defined() && q.dim() == 4 && k.dim() == 4, op, ": q ", q.str(), ", k ",
             k.str(), " and v ", v.str(), " must be [B, S, heads, D]");
  check_shape(op, "k", k, {q.size(0), q.size(1), k.size(2), q.size(3)});
  check_shape(op, "v", v, k.shape());
  check_dtype(op, "k", k, q.dtype());
  check_dtype(op, "v", v, q.dtype());
  if (q.device().is_cpu())
    LCTX_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64, op, ": the CPU supports f32 and f64, got q ",
               q.str());
  else
    LCTX_CHECK(q.dtype() == DType::bf16 || q.dtype() == DType::f16, op,
               ": CUDA supports bf16 and f16 (attn::flash's kernels), got q ", q.str());
  check_same_device(op, {&q, &k, &v});
  for (auto [name, p] : {std::pair{"e", &in.e}, std::pair{"f", &in.f}}) {
    LCTX_CHECK(p->defined() && p->dim() == 2, op, ": ", name, " must be [k, n], got ", p->str());
    check_dtype(op, name, *p, q.dtype());
    check_contiguous(op, name, *p);
    check_same_device(op, {&q, p});
  }
  check_shape(op, "f", in.f, in.e.shape());
  LCTX_CHECK(q.size(1) <= in.e.size(1), op, ": sequence length S = ", q.size(1), " (q ", q.str(),
             ") exceeds the projections' length n = ", in.e.size(1), " (e ", in.e.str(),
             "); E and F are sized for the longest sequence");
}

// [B, S, H, D] -> batch row b as an [S, H * D] matrix (x contiguous).
Tensor rows_of(const Tensor& x, int64_t b) { return x.slice(0, b, b + 1).view({x.size(1), x.size(2) * x.size(3)}); }

attn::FlashOptions flash_options(const LinformerOptions& opts) {
  attn::FlashOptions f;
  f.softmax_scale = opts.softmax_scale;
  f.mask = attn::Mask::none;
  return f;
}

}  // namespace

Tensor linformer_project(const Tensor& p_cols, const Tensor& x, Stream s) {
  Tensor out = Tensor::empty({x.size(0), p_cols.size(0), x.size(2), x.size(3)}, x.dtype(), x.device());
  for (int64_t b = 0; b < x.size(0); ++b) {
    Tensor ob = rows_of(out, b);
    ops::matmul(ob, p_cols, rows_of(x, b), ops::Trans::none, ops::Trans::none, 1.0f, 0.0f, s);
  }
  return out;
}

LinformerProjectGrads linformer_project_backward(const Tensor& p_cols, const Tensor& x, const Tensor& dxp, Stream s) {
  LinformerProjectGrads g{Tensor::empty(x.shape(), x.dtype(), x.device()),
                          Tensor::zeros(p_cols.shape(), wide_dtype(p_cols.dtype()), p_cols.device(), s)};
  for (int64_t b = 0; b < x.size(0); ++b) {
    Tensor dxb = rows_of(g.dx, b);
    ops::matmul(dxb, p_cols, rows_of(dxp, b), ops::Trans::transpose, ops::Trans::none, 1.0f, 0.0f, s);
    ops::matmul(g.dp_cols, rows_of(dxp, b), rows_of(x, b), ops::Trans::none, ops::Trans::transpose, 1.0f, 1.0f, s);
  }
  return g;
}

namespace {

// Backward of the projection by P[:, :S] (p_s): dx, and dP with zero columns S.. n-1.
void project_backward(const Tensor& p, const Tensor& p_s, const Tensor& x, const Tensor& dxp, Tensor& dx, Tensor& dp,
                      Stream s) {
  LinformerProjectGrads g = linformer_project_backward(p_s, x, dxp, s);
  dx = g.dx;
  dp = Tensor::zeros(p.shape(), wide_dtype(p.dtype()), p.device(), s);
  Tensor head = dp.slice(1, 0, x.size(1));
  head.copy_from(g.dp_cols, s);
}

}  // namespace

// The call's operands: k and v contiguous, and the first S columns of E and F.
struct Operands {
  Tensor k, v, e_s, f_s;
  Operands(const LinformerInputs& in, Stream s)
      : k(in.k.contiguous(s)),
        v(in.v.contiguous(s)),
        e_s(in.e.slice(1, 0, in.k.size(1)).contiguous(s)),
        f_s(in.f.slice(1, 0, in.k.size(1)).contiguous(s)) {}
};

Tensor linformer_forward(const LinformerInputs& in, const LinformerOptions& opts, Stream s) {
  check_inputs("linformer_forward", in);
  const Operands x(in, s);
  return attn::flash_forward(in.q, linformer_project(x.e_s, x.k, s), linformer_project(x.f_s, x.v, s), flash_options(opts), s)
      .o;
}

LinformerGrads linformer_backward(const LinformerInputs& in, const Tensor& dout, const LinformerOptions& opts,
                                  Stream s) {
  check_inputs("linformer_backward", in);
  const Operands x(in, s);
  const Tensor kp = linformer_project(x.e_s, x.k, s), vp = linformer_project(x.f_s, x.v, s);
  const attn::FlashOptions fo = flash_options(opts);
  const attn::FlashOutput out = attn::flash_forward(in.q, kp, vp, fo, s);
  const attn::FlashGrads fg = attn::flash_backward(in.q, kp, vp, out.o, out.lse, dout, fo, GradMode::overwrite, {}, s);
  LinformerGrads g;
  g.dq = fg.dq;
  project_backward(in.e, x.e_s, x.k, fg.dk, g.dk, g.de, s);
  project_backward(in.f, x.f_s, x.v, fg.dv, g.dv, g.df, s);
  return g;
}

}  // namespace lctx::linear_attn
