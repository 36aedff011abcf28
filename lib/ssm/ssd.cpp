// Mamba-2 SSD on linear_attn (ssd.h): checks a call with errors naming SSD's operands, forms
// linear_attn's inputs (v = dt x, log_decay = dt A, q = C, k = B), runs linear_attn_forward /
// _backward (Decay::data), and maps the results back: y = o + D x; with dv, d_log_decay from
// linear_attn, dx = dt dv + D dy, d(dt) = x . dv + A d_log_decay (then through softplus),
// dA = sum dt d_log_decay, dD = sum x . dy. The elementwise maps are plain CPU loops (serial,
// so the sums do not depend on the thread count) or their CUDA kernels (ssd.cu); linear_attn
// holds the scan.
#include "ssm/ssd.h"

#include "linear_attn/linear_attn.h"
#include "ssm/operand.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

using detail::operand;
using detail::optional_operand;

// x leads the call: CPU f32/f64, or CUDA f32/bf16/f16 in a CUDA build.
void check_device_dtype(const char* op, const Tensor& x) {
  const DType d = x.dtype();
  if (x.device().is_cpu()) {
    LCTX_CHECK(d == DType::f32 || d == DType::f64, op, ": the CPU implementation supports f32 and f64, got x ",
               x.str());
    return;
  }
#ifndef LCTX_HAVE_CUDA
  LCTX_FAIL(op, ": x ", x.str(), " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
  LCTX_CHECK(d == DType::f32 || d == DType::bf16 || d == DType::f16, op, ": CUDA supports f32, bf16 and f16, got x ",
             x.str());
}

// LCTX_SSD_CUDA(call): the CUDA half in a CUDA build (check_device_dtype refused CUDA tensors
// in a CPU-only build, where the call is left out).
#ifdef LCTX_HAVE_CUDA
#define LCTX_SSD_CUDA(call) call
#else
#define LCTX_SSD_CUDA(call) (void)s
#endif

struct SsdShape {
  int64_t batch = 0, seqlen = 0;
  int heads = 0, head_dim = 0, groups = 0, dstate = 0;
  DType dtype = DType::f32, wide = DType::f32;
  int64_t rows() const { return batch * seqlen * heads; }  // (b, t, h) rows of dt, v, log_decay
};

SsdShape check_inputs(const char* op, const SsdInputs& in) {
  const Tensor& x = in.x;
  LCTX_CHECK(x.defined() && x.dim() == 4, op, ": x ", x.defined() ? x.str() : "(undefined)", " must be [B, S, H, P]");
  check_device_dtype(op, x);
  LCTX_CHECK(in.B.defined() && in.B.dim() == 4, op, ": B ", in.B.defined() ? in.B.str() : "(undefined)",
             " must be [B, S, G, N]");
  SsdShape sh{x.size(0),
              x.size(1),
              static_cast<int>(x.size(2)),
              static_cast<int>(x.size(3)),
              static_cast<int>(in.B.size(2)),
              static_cast<int>(in.B.size(3)),
              x.dtype(),
              wide_dtype(x.dtype())};
  LCTX_CHECK(sh.groups >= 1 && sh.heads % sh.groups == 0, op, ": the groups of B ", in.B.str(),
             " must divide the heads H = ", sh.heads, " of x ", x.str());
  const Shape bc = {sh.batch, sh.seqlen, sh.groups, sh.dstate};
  operand(op, "x", x, x.shape(), sh.dtype, x);
  operand(op, "dt", in.dt, {sh.batch, sh.seqlen, sh.heads}, sh.dtype, x);
  operand(op, "A", in.A, {sh.heads}, sh.wide, x);
  operand(op, "B", in.B, bc, sh.dtype, x);
  operand(op, "C", in.C, bc, sh.dtype, x);
  optional_operand(op, "D", in.D, {sh.heads}, sh.wide, x);
  optional_operand(op, "dt_bias", in.dt_bias, {sh.heads}, sh.wide, x);
  optional_operand(op, "state0", in.state0, {sh.batch, sh.heads, sh.dstate, sh.head_dim}, sh.wide, x);
  return sh;
}

linear_attn::LinearAttnOptions la_options(const SsdOptions& opts) {
  return {.mask = linear_attn::Mask::causal, .decay = linear_attn::Decay::data, .chunk = opts.chunk};
}

// Runs f(T{}) with T the C++ type of dtype (f32 or f64).
template <class F>
void by_dtype(DType dtype, F&& f) {
  if (dtype == DType::f64)
    f(double{});
  else
    f(float{});
}

// linear_attn's inputs for a call, with dt (after bias and softplus) and dt_raw + dt_bias.
struct Mapped {
  Tensor dt, raw;
  linear_attn::LinearAttnInputs la;
};

template <class T>
void map_inputs_cpu(const SsdInputs& in, const SsdShape& sh, const SsdOptions& opts, Mapped& m, Tensor& v,
                    Tensor& log_decay) {
  const T *dt_in = in.dt.data<T>(), *x = in.x.data<T>(), *A = in.A.data<T>();
  const T* bias = in.dt_bias.defined() ? in.dt_bias.data<T>() : nullptr;
  T *dt = m.dt.data<T>(), *raw = m.raw.data<T>(), *vv = v.data<T>(), *ld = log_decay.data<T>();
  for (int64_t r = 0; r < sh.rows(); ++r) {
    const int h = static_cast<int>(r % sh.heads);
    raw[r] = dt_in[r] + (bias ? bias[h] : T(0));
    dt[r] = opts.softplus == Softplus::on ? detail::softplus(raw[r]) : raw[r];
    ld[r] = dt[r] * A[h];
    for (int p = 0; p < sh.head_dim; ++p) vv[r * sh.head_dim + p] = dt[r] * x[r * sh.head_dim + p];
  }
}

Mapped map_inputs(const SsdInputs& in, const SsdShape& sh, const SsdOptions& opts, Stream s) {
  const Device dev = in.x.device();
  Mapped m;
  m.dt = Tensor::empty({sh.batch, sh.seqlen, sh.heads}, sh.wide, dev);
  m.raw = Tensor::empty(m.dt.shape(), sh.wide, dev);
  Tensor v = Tensor::empty(in.x.shape(), sh.dtype, dev), log_decay = Tensor::empty(m.dt.shape(), sh.wide, dev);
  if (dev.is_cuda())
    LCTX_SSD_CUDA(detail::ssd_map_inputs_cuda(m.dt, m.raw, v, log_decay, in, opts.softplus, s));
  else
    by_dtype(sh.dtype, [&]<class T>(T) { map_inputs_cpu<T>(in, sh, opts, m, v, log_decay); });
  m.la = {.q = in.C, .k = in.B, .v = v, .log_decay = log_decay, .state0 = in.state0};
  return m;
}

// y += D x.
template <class T>
void add_skip_cpu(const SsdInputs& in, const SsdShape& sh, Tensor& o) {
  T* y = o.data<T>();
  const T *x = in.x.data<T>(), *D = in.D.data<T>();
  for (int64_t r = 0; r < sh.rows(); ++r)
    for (int p = 0; p < sh.head_dim; ++p) y[r * sh.head_dim + p] += D[r % sh.heads] * x[r * sh.head_dim + p];
}

// g.dx, d_dt, dA, dD, d_dt_bias (allocated) from linear_attn's dv, d_log_decay and dy.
template <class T>
void map_grads_cpu(const SsdInputs& in, const SsdShape& sh, const SsdOptions& opts, const Mapped& m, const Tensor& dy,
                   const linear_attn::LinearAttnGrads& la, SsdGrads& g) {
  const T *x = in.x.data<T>(), *A = in.A.data<T>(), *gy = dy.data<T>(), *dv = la.dv.data<T>();
  const T *dlog = la.d_log_decay.data<T>(), *dt = m.dt.data<T>(), *raw = m.raw.data<T>();
  const T* D = in.D.defined() ? in.D.data<T>() : nullptr;
  T *dx = g.dx.data<T>(), *d_dt = g.d_dt.data<T>(), *dA = g.dA.data<T>();
  T* dD = D ? g.dD.data<T>() : nullptr;
  T* dbias = g.d_dt_bias.defined() ? g.d_dt_bias.data<T>() : nullptr;
  for (int64_t r = 0; r < sh.rows(); ++r) {
    const int h = static_cast<int>(r % sh.heads);
    T ddt = dlog[r] * A[h];
    for (int p = 0; p < sh.head_dim; ++p) {
      const int64_t i = r * sh.head_dim + p;
      ddt += dv[i] * x[i];
      dx[i] = dv[i] * dt[r] + (D ? D[h] * gy[i] : T(0));
      if (dD) dD[h] += gy[i] * x[i];
    }
    dA[h] += dlog[r] * dt[r];
    d_dt[r] = opts.softplus == Softplus::on ? ddt * detail::sigmoid(raw[r]) : ddt;
    if (dbias) dbias[h] += d_dt[r];
  }
}

}  // namespace

SsdOutput ssd_forward(const SsdInputs& in, const SsdOptions& opts, Stream s) {
  const SsdShape sh = check_inputs("ssd_forward", in);
  const Mapped m = map_inputs(in, sh, opts, s);
  auto la = linear_attn::linear_attn_forward(m.la, la_options(opts), s);
  if (in.D.defined()) {
    if (la.o.device().is_cuda())
      LCTX_SSD_CUDA(detail::ssd_add_skip_cuda(la.o, in.x, in.D, s));
    else
      by_dtype(sh.dtype, [&]<class T>(T) { add_skip_cpu<T>(in, sh, la.o); });
  }
  return {la.o, la.final_state};
}

SsdGrads ssd_backward(const SsdInputs& in, const Tensor& dy, const Tensor& d_final_state, const SsdOptions& opts,
                      Stream s) {
  const char* op = "ssd_backward";
  const SsdShape sh = check_inputs(op, in);
  operand(op, "dy", dy, in.x.shape(), sh.dtype, in.x);
  const Mapped m = map_inputs(in, sh, opts, s);
  auto la = linear_attn::linear_attn_backward(m.la, dy, d_final_state, la_options(opts), s);
  const Device dev = in.x.device();
  SsdGrads g;
  g.dC = la.dq;
  g.dB = la.dk;
  g.d_state0 = la.d_state0;
  g.dx = Tensor::empty(in.x.shape(), sh.dtype, dev);
  g.d_dt = Tensor::empty(in.dt.shape(), sh.dtype, dev);
  g.dA = Tensor::zeros({sh.heads}, sh.wide, dev, s);
  if (in.D.defined()) g.dD = Tensor::zeros({sh.heads}, sh.wide, dev, s);
  if (in.dt_bias.defined()) g.d_dt_bias = Tensor::zeros({sh.heads}, sh.wide, dev, s);
  if (dev.is_cuda())
    LCTX_SSD_CUDA(detail::ssd_map_grads_cuda(g, in, dy, la.dv, la.d_log_decay, m.dt, m.raw, opts.softplus, s));
  else
    by_dtype(sh.dtype, [&]<class T>(T) { map_grads_cpu<T>(in, sh, opts, m, dy, la, g); });
  return g;
}

}  // namespace lctx::ssm
