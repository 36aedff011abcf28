// Strided attention (strided_attention.h): the window and far-key (strided or global) flash
// calls, padding to a multiple of the stride, and the CPU merge / lse gather
// (strided_attention.cu on CUDA).
#include "attn/strided_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attn/flash_few_keys.h"

namespace lctx::attn {

namespace {

// The far part: strided (s = stride, residue views, keys t' <= t - ceil(w / s)) or global
// (s = 1, keys j < g with j <= i - w: causal with k_offset = w). The queries are padded to
// Sqp rows starting at position q0p = q_offset - front (a multiple of s), the keys to
// Skp = q0p + Sqp rows starting at 0.
struct Plan {
  int64_t B, Sq, Sk, H, D, s, g, front, q0p, Sqp, Skp;
  FlashOptions window, far;
};

Plan make_plan(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const StridedOptions& opts) {
  LCTX_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q ", q.str(), ", k ", k.str(), " and v ", v.str(),
             " must be [B, S, H, D]");
  LCTX_CHECK(opts.q_offset >= 0, op, ": q_offset ", opts.q_offset, " must be >= 0");
  const int64_t Sq = q.size(1), Sk = opts.q_offset + Sq;
  LCTX_CHECK(k.size(1) == Sk && v.size(1) == Sk, op, ": k ", k.str(), " and v ", v.str(), " must hold the keys [0, ",
             Sk, ") = [0, q_offset + Sq) of the queries q ", q.str(), " at positions [", opts.q_offset, ", ", Sk, ")");
  Plan p{q.size(0), Sq, Sk, q.size(2), q.size(3), 1, opts.n_global, 0, 0, 0, 0, {}, {}};
  LCTX_CHECK(opts.stride >= 0 && opts.n_global >= 0 && (opts.stride > 0) != (opts.n_global > 0), op, ": stride ",
             opts.stride, " and n_global ", opts.n_global, ": exactly one must be >= 1 (stride 0 without global keys)");
  LCTX_CHECK(opts.window >= 1 && opts.window <= Sk, op, ": window ", opts.window, " must be in [1, ", Sk,
             "] (the keys; a window larger than the sequence), q ", q.str());
  LCTX_CHECK(opts.n_global <= Sk, op, ": ", opts.n_global, " global tokens for a sequence of ", Sk, " positions, q ",
             q.str());
  if (opts.stride > 0) p.s = opts.stride;
  p.front = opts.q_offset % p.s;
  p.q0p = opts.q_offset - p.front;
  p.Sqp = (p.front + Sq + p.s - 1) / p.s * p.s;
  p.Skp = p.q0p + p.Sqp;
  FlashOptions& w = p.window;
  w.softmax_scale = opts.softmax_scale;
  w.mask = Mask::causal;
  w.window_left = opts.window - 1;
  w.q_offset = p.q0p;
  w.backend = opts.backend;
  p.far = w;
  p.far.out_dtype = OutputDType::f32;
  p.far.window_left = -1;
  // strided: residue steps t - t' >= ceil(w / s); global: i - j >= w
  p.far.q_offset = p.q0p / p.s;
  p.far.k_offset = p.g > 0 ? opts.window : (opts.window + p.s - 1) / p.s;
  return p;
}

// t itself when it already is rows [front, front + t.size(1)) of `rows` and contiguous, else a
// contiguous copy placed there among zero rows.
Tensor padded(const Tensor& t, int64_t front, int64_t rows, Stream s) {
  if (front == 0 && t.size(1) == rows && t.is_contiguous()) return t;
  Tensor z = Tensor::zeros({t.size(0), rows, t.size(2), t.size(3)}, t.dtype(), t.device(), s);
  z.slice(1, front, front + t.size(1)).copy_from(t, s);
  return z;
}

// [B, S', H, D] viewed as the residue subsequences [B, S' / s, s H, D].
Tensor residues(const Tensor& t, int64_t s) { return t.view({t.size(0), t.size(1) / s, s * t.size(2), t.size(3)}); }

template <class T>
void merge_cpu(const Tensor& ow_t, const Tensor& lw_t, const Tensor& os_t, const Tensor& ls_t, int64_t s,
               int64_t front, Tensor& o_t, Tensor& lse_t) {
  const int64_t B = o_t.size(0), S = o_t.size(1), H = o_t.size(2), D = o_t.size(3), Sp = ow_t.size(1);
  const T *ow = ow_t.data<T>(), *lw = lw_t.data<T>(), *os = os_t.data<T>(), *ls = ls_t.data<T>();
  T *o = o_t.data<T>(), *lse = lse_t.data<T>();
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < B * S * H; ++row) {
    const int64_t b = row / (S * H), pos = row / H % S, h = row % H, pp = pos + front;
    const T a = lw[(b * H + h) * Sp + pp], c = ls[(b * s * H + pp % s * H + h) * (Sp / s) + pp / s];
    const T m = std::max(a, c);
    T* out = o + row * D;
    const T* x = ow + ((b * Sp + pp) * H + h) * D;
    const T* y = os + ((b * Sp + pp) * H + h) * D;
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
void gather_cpu(const Tensor& lse_t, int64_t s, int64_t front, Tensor& ls_t) {
  const int64_t H = lse_t.size(1), S = lse_t.size(2), n = ls_t.size(2);
  const T* lse = lse_t.data<T>();
  T* ls = ls_t.data<T>();
  for (int64_t e = 0; e < ls_t.numel(); ++e) {
    const int64_t b = e / (s * H * n), r = e / (H * n) % s, h = e / n % H, t = e % n, pos = t * s + r - front;
    ls[e] = pos >= 0 && pos < S ? lse[(b * H + h) * S + pos] : std::numeric_limits<T>::infinity();  // padded: P = 0
  }
}

void merge(const Tensor& ow, const Tensor& lw, const Tensor& os, const Tensor& ls, int64_t stride, int64_t front,
           Tensor& o, Tensor& lse, Stream s) {
  if (o.device().is_cpu()) {
    LCTX_DISPATCH_CPU_FLOAT(o.dtype(), "strided_attention_forward",
                            [&] { merge_cpu<scalar_t>(ow, lw, os, ls, stride, front, o, lse); });
  } else {
#ifdef LCTX_HAVE_CUDA
    detail::strided_merge_cuda(ow, lw, os, ls, stride, front, o, lse, s);
#endif
  }
  (void)s;
}

void gather(const Tensor& lse, int64_t stride, int64_t front, Tensor& ls, Stream s) {
  if (lse.device().is_cpu()) {
    LCTX_DISPATCH_CPU_FLOAT(lse.dtype(), "strided_attention_backward",
                            [&] { gather_cpu<scalar_t>(lse, stride, front, ls); });
  } else {
#ifdef LCTX_HAVE_CUDA
    detail::strided_lse_gather_cuda(lse, stride, front, ls, s);
#endif
  }
  (void)s;
}

// The global keys' backward, accumulated into g (dq [B, Sq, H, D], dk/dv of the g rows, wide):
// the queries at positions >= w + g - 1 see every global key and go through
// flash_backward_few_keys (one block per key tile would leave the GPU idle); the first rows
// keep the causal call.
void global_backward(const Plan& p, const Tensor& qp, const Tensor& kp, const Tensor& vp, const Tensor& op,
                     const Tensor& lp, const Tensor& dop, const FlashGrads& g, Stream s) {
  const auto rows = [](const Tensor& t, int64_t a, int64_t b) { return t.slice(1, a, b); };
  const Tensor kg = rows(kp, 0, p.g), vg = rows(vp, 0, p.g);
  const Tensor& dkg = g.dk;
  const Tensor& dvg = g.dv;
  const int64_t r0 = std::clamp(p.far.k_offset + p.g - 1 - p.q0p, int64_t{0}, p.Sqp);
  if (r0 > 0)
    flash_backward(rows(qp, 0, r0), kg, vg, rows(op, 0, r0), lp.slice(2, 0, r0), rows(dop, 0, r0), p.far,
                   GradMode::accumulate, FlashGrads{rows(g.dq, 0, r0), dkg, dvg}, s);
  if (r0 == p.Sqp) return;
  FlashOptions all = p.far;
  all.mask = Mask::none;
  all.q_offset = all.k_offset = 0;
  flash_backward_few_keys(rows(qp, r0, p.Sqp), kg, vg, rows(op, r0, p.Sqp), lp.slice(2, r0, p.Sqp),
                          rows(dop, r0, p.Sqp), all, FlashGrads{rows(g.dq, r0, p.Sqp), dkg, dvg}, s);
}

}  // namespace

FlashOutput strided_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const StridedOptions& opts,
                                      Stream s) {
  const Plan p = make_plan("strided_attention_forward", q, k, v, opts);
  const Tensor qp = padded(q, p.front, p.Sqp, s), kp = padded(k, 0, p.Skp, s), vp = padded(v, 0, p.Skp, s);
  const FlashOutput w = flash_forward(qp, kp, vp, p.window, s);
  const FlashOutput far = p.g > 0 ? flash_forward(qp, kp.slice(1, 0, p.g), vp.slice(1, 0, p.g), p.far, s)
                                  : flash_forward(residues(qp, p.s), residues(kp, p.s), residues(vp, p.s), p.far, s);
  FlashOutput out{Tensor::empty(q.shape(), q.dtype(), q.device()),
                  Tensor::empty({p.B, p.H, p.Sq}, wide_dtype(q.dtype()), q.device())};
  merge(w.o, w.lse, far.o.view({p.B, p.Sqp, p.H, p.D}), far.lse, p.s, p.front, out.o, out.lse, s);
  return out;
}

FlashGrads strided_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                      const Tensor& lse, const Tensor& dout, const StridedOptions& opts, Stream s) {
  const char* op = "strided_attention_backward";
  const Plan p = make_plan(op, q, k, v, opts);
  check_bshd(op, "o", o, q.shape());
  check_bshd(op, "dout", dout, q.shape());
  check_shape(op, "lse", lse, {p.B, p.H, p.Sq});
  check_dtype(op, "lse", lse, wide_dtype(q.dtype()));
  const Tensor lse_c = lse.contiguous(s);
  const DType gd = wide_dtype(q.dtype());
  const Device dev = q.device();
  if (p.g > 0) {  // no padding (s = 1): the window part writes the result, the global part is added
    FlashGrads out{Tensor::empty(q.shape(), q.dtype(), dev), Tensor::empty(k.shape(), q.dtype(), dev),
                   Tensor::empty(k.shape(), q.dtype(), dev)};
    flash_backward(q, k, v, o, lse_c, dout, p.window, GradMode::overwrite, out, s);
    Shape gshape = k.shape();
    gshape[1] = p.g;
    const FlashGrads glob{Tensor::zeros(q.shape(), gd, dev, s), Tensor::zeros(gshape, gd, dev, s),
                          Tensor::zeros(gshape, gd, dev, s)};
    global_backward(p, q, k, v, o, lse_c, dout, glob, s);
    out.dq.add_from(glob.dq, s);
    out.dk.slice(1, 0, p.g).add_from(glob.dk, s);
    out.dv.slice(1, 0, p.g).add_from(glob.dv, s);
    return out;
  }
  const Tensor qp = padded(q, p.front, p.Sqp, s), kp = padded(k, 0, p.Skp, s), vp = padded(v, 0, p.Skp, s);
  const Tensor op_ = padded(o, p.front, p.Sqp, s), dop = padded(dout, p.front, p.Sqp, s);
  // [B, H, Sqp], +inf on padded rows: P = exp(s - lse) = 0 on every backend (cuDNN's backward
  // computes exp(s - lse) as is: -inf there, next to a visible key, gives dV = inf * 0 = NaN).
  Tensor lp = lse_c;
  if (p.Sqp != p.Sq) {
    lp = Tensor::full({p.B, p.H, p.Sqp}, std::numeric_limits<double>::infinity(), lse.dtype(), lse.device(), s);
    lp.slice(2, p.front, p.front + p.Sq).copy_from(lse_c, s);
  }
  FlashGrads g{Tensor::empty(qp.shape(), gd, dev), Tensor::empty(kp.shape(), gd, dev), Tensor::empty(kp.shape(), gd, dev)};
  flash_backward(qp, kp, vp, op_, lp, dop, p.window, GradMode::overwrite, g, s);
  Tensor ls = Tensor::empty({p.B, p.s * p.H, p.Sqp / p.s}, lse.dtype(), lse.device());
  gather(lse_c, p.s, p.front, ls, s);
  flash_backward(residues(qp, p.s), residues(kp, p.s), residues(vp, p.s), residues(op_, p.s), ls, residues(dop, p.s),
                 p.far, GradMode::accumulate, FlashGrads{residues(g.dq, p.s), residues(g.dk, p.s), residues(g.dv, p.s)},
                 s);
  if (p.Sqp == p.Sq && p.Skp == p.Sk && gd == q.dtype()) return g;
  FlashGrads out{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), q.dtype(), q.device()),
                 Tensor::empty(k.shape(), q.dtype(), q.device())};
  out.dq.copy_from(g.dq.slice(1, p.front, p.front + p.Sq), s);
  out.dk.copy_from(g.dk.slice(1, 0, p.Sk), s);
  out.dv.copy_from(g.dv.slice(1, 0, p.Sk), s);
  return out;
}

}  // namespace lctx::attn
