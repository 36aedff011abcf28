// Strided attention (strided_attention.h): the window and far-key (strided or global) flash
// calls, padding to a multiple of the stride, and the CPU merge / lse gather
// (strided_attention.cu on CUDA).
#include "attn/strided_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lctx::attn {

namespace {

// The far part: strided (s = stride, residue views, keys t' <= t - ceil(w / s)) or global
// (s = 1, keys j < g with j <= i - w: causal with k_offset = w).
struct Plan {
  int64_t B, S, Sp, H, Hkv, D, s, g;
  FlashOptions window, far;
};

Plan make_plan(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const StridedOptions& opts) {
  LCTX_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4, op, ": q ", q.str(), " and k ", k.str(), " must be [B, S, H, D]");
  LCTX_CHECK(k.size(1) == q.size(1), op, ": strided attention is self-attention: q ", q.str(), " and k ", k.str(),
             " need the same sequence length");
  Plan p{q.size(0), q.size(1), 0, q.size(2), k.size(2), q.size(3), 1, opts.n_global, {}, {}};
  LCTX_CHECK(opts.stride >= 0 && opts.n_global >= 0 && (opts.stride > 0) != (opts.n_global > 0), op, ": stride ",
             opts.stride, " and n_global ", opts.n_global, ": exactly one must be >= 1 (stride 0 without global keys)");
  LCTX_CHECK(opts.window >= 1 && opts.window <= p.S, op, ": window ", opts.window, " must be in [1, S = ", p.S,
             "] (a window larger than the sequence), q ", q.str());
  LCTX_CHECK(opts.n_global <= p.S, op, ": ", opts.n_global, " global tokens for a sequence of ", p.S,
             " positions, q ", q.str());
  if (opts.stride > 0) p.s = opts.stride;
  p.Sp = (p.S + p.s - 1) / p.s * p.s;
  FlashOptions& w = p.window;
  w.softmax_scale = opts.softmax_scale;
  w.mask = Mask::causal;
  w.window_left = opts.window - 1;
  w.backend = opts.backend;
  w.out_dtype = OutputDType::f32;
  p.far = w;
  p.far.window_left = -1;
  // strided: residue steps t - t' >= ceil(w / s); global: i - j >= w
  p.far.k_offset = p.g > 0 ? opts.window : (opts.window + p.s - 1) / p.s;
  return p;
}

// t itself when it already has S' rows and is contiguous, else a zero-padded contiguous copy.
Tensor padded(const Tensor& t, int64_t Sp, Stream s) {
  if (t.size(1) == Sp && t.is_contiguous()) return t;
  Tensor z = Tensor::zeros({t.size(0), Sp, t.size(2), t.size(3)}, t.dtype(), t.device(), s);
  z.slice(1, 0, t.size(1)).copy_from(t, s);
  return z;
}

// [B, S', H, D] viewed as the residue subsequences [B, S' / s, s H, D].
Tensor residues(const Tensor& t, int64_t s) { return t.view({t.size(0), t.size(1) / s, s * t.size(2), t.size(3)}); }

template <class T>
void merge_cpu(const Tensor& ow_t, const Tensor& lw_t, const Tensor& os_t, const Tensor& ls_t, int64_t s, Tensor& o_t,
               Tensor& lse_t) {
  const int64_t B = o_t.size(0), S = o_t.size(1), H = o_t.size(2), D = o_t.size(3), Sp = ow_t.size(1);
  const T *ow = ow_t.data<T>(), *lw = lw_t.data<T>(), *os = os_t.data<T>(), *ls = ls_t.data<T>();
  T *o = o_t.data<T>(), *lse = lse_t.data<T>();
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < B * S * H; ++row) {
    const int64_t b = row / (S * H), pos = row / H % S, h = row % H;
    const T a = lw[(b * H + h) * Sp + pos], c = ls[(b * s * H + pos % s * H + h) * (Sp / s) + pos / s];
    const T m = std::max(a, c);
    T* out = o + row * D;
    const T* x = ow + ((b * Sp + pos) * H + h) * D;
    const T* y = os + ((b * Sp + pos) * H + h) * D;
    if (m == kNegInf) {
      std::fill(out, out + D, T(0));
      lse[(b * H + h) * S + pos] = kNegInf;
      continue;
    }
    const T ea = std::exp(a - m), ec = std::exp(c - m), sum = ea + ec;
    for (int64_t d = 0; d < D; ++d) out[d] = (ea * x[d] + ec * y[d]) / sum;
    lse[(b * H + h) * S + pos] = m + std::log(sum);
  }
}

template <class T>
void gather_cpu(const Tensor& lse_t, int64_t s, Tensor& ls_t) {
  const int64_t H = lse_t.size(1), S = lse_t.size(2), n = ls_t.size(2);
  const T* lse = lse_t.data<T>();
  T* ls = ls_t.data<T>();
  for (int64_t e = 0; e < ls_t.numel(); ++e) {
    const int64_t b = e / (s * H * n), r = e / (H * n) % s, h = e / n % H, t = e % n, pos = t * s + r;
    ls[e] = pos < S ? lse[(b * H + h) * S + pos] : -std::numeric_limits<T>::infinity();
  }
}

void merge(const Tensor& ow, const Tensor& lw, const Tensor& os, const Tensor& ls, int64_t stride, Tensor& o,
           Tensor& lse, Stream s) {
  if (o.device().is_cpu()) {
    LCTX_DISPATCH_CPU_FLOAT(o.dtype(), "strided_attention_forward", [&] { merge_cpu<scalar_t>(ow, lw, os, ls, stride, o, lse); });
  } else {
#ifdef LCTX_HAVE_CUDA
    detail::strided_merge_cuda(ow, lw, os, ls, stride, o, lse, s);
#endif
  }
  (void)s;
}

void gather(const Tensor& lse, int64_t stride, Tensor& ls, Stream s) {
  if (lse.device().is_cpu()) {
    LCTX_DISPATCH_CPU_FLOAT(lse.dtype(), "strided_attention_backward", [&] { gather_cpu<scalar_t>(lse, stride, ls); });
  } else {
#ifdef LCTX_HAVE_CUDA
    detail::strided_lse_gather_cuda(lse, stride, ls, s);
#endif
  }
  (void)s;
}

}  // namespace

FlashOutput strided_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const StridedOptions& opts,
                                      Stream s) {
  const Plan p = make_plan("strided_attention_forward", q, k, v, opts);
  const Tensor qp = padded(q, p.Sp, s), kp = padded(k, p.Sp, s), vp = padded(v, p.Sp, s);
  const FlashOutput w = flash_forward(qp, kp, vp, p.window, s);
  const FlashOutput far = p.g > 0 ? flash_forward(qp, kp.slice(1, 0, p.g), vp.slice(1, 0, p.g), p.far, s)
                                  : flash_forward(residues(qp, p.s), residues(kp, p.s), residues(vp, p.s), p.far, s);
  FlashOutput out{Tensor::empty(q.shape(), q.dtype(), q.device()),
                  Tensor::empty({p.B, p.H, p.S}, wide_dtype(q.dtype()), q.device())};
  merge(w.o, w.lse, far.o.view({p.B, p.Sp, p.H, p.D}), far.lse, p.s, out.o, out.lse, s);
  return out;
}

FlashGrads strided_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                      const Tensor& lse, const Tensor& dout, const StridedOptions& opts, Stream s) {
  const char* op = "strided_attention_backward";
  const Plan p = make_plan(op, q, k, v, opts);
  check_bshd(op, "o", o, q.shape());
  check_bshd(op, "dout", dout, q.shape());
  check_shape(op, "lse", lse, {p.B, p.H, p.S});
  check_dtype(op, "lse", lse, wide_dtype(q.dtype()));
  const Tensor qp = padded(q, p.Sp, s), kp = padded(k, p.Sp, s), vp = padded(v, p.Sp, s);
  const Tensor op_ = padded(o, p.Sp, s), dop = padded(dout, p.Sp, s);
  const Tensor lse_c = lse.contiguous(s);
  Tensor lp = lse_c;  // [B, H, S'], -inf on padded rows (their dout is 0: no gradient)
  if (p.Sp != p.S) {
    lp = Tensor::full({p.B, p.H, p.Sp}, -std::numeric_limits<double>::infinity(), lse.dtype(), lse.device(), s);
    lp.slice(2, 0, p.S).copy_from(lse_c, s);
  }

  const DType gd = wide_dtype(q.dtype());
  FlashGrads g{Tensor::empty(qp.shape(), gd, q.device()), Tensor::empty(kp.shape(), gd, q.device()),
               Tensor::empty(kp.shape(), gd, q.device())};
  flash_backward(qp, kp, vp, op_, lp, dop, p.window, GradMode::overwrite, g, s);
  if (p.g > 0) {
    flash_backward(qp, kp.slice(1, 0, p.g), vp.slice(1, 0, p.g), op_, lp, dop, p.far, GradMode::accumulate,
                   FlashGrads{g.dq, g.dk.slice(1, 0, p.g), g.dv.slice(1, 0, p.g)}, s);
  } else {
    Tensor ls = Tensor::empty({p.B, p.s * p.H, p.Sp / p.s}, lse.dtype(), lse.device());
    gather(lse_c, p.s, ls, s);
    flash_backward(residues(qp, p.s), residues(kp, p.s), residues(vp, p.s), residues(op_, p.s), ls,
                   residues(dop, p.s), p.far, GradMode::accumulate,
                   FlashGrads{residues(g.dq, p.s), residues(g.dk, p.s), residues(g.dv, p.s)}, s);
  }
  if (p.Sp == p.S && gd == q.dtype()) return g;
  FlashGrads out{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), q.dtype(), q.device()),
                 Tensor::empty(k.shape(), q.dtype(), q.device())};
  out.dq.copy_from(g.dq.slice(1, 0, p.S), s);
  out.dk.copy_from(g.dk.slice(1, 0, p.S), s);
  out.dv.copy_from(g.dv.slice(1, 0, p.S), s);
  return out;
}

}  // namespace lctx::attn
