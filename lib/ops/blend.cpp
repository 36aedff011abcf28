#include "ops/blend.h"

#include <cmath>
#include <utility>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
T gate_of(const T* z, int64_t i, double ratio) {
  return z ? T(1) / (T(1) + std::exp(-z[i])) : static_cast<T>(ratio);
}

template <class T>
void cpu_forward(T* o, const T* a, const T* b, const T* z, double ratio, int64_t rows, int64_t E) {
  for (int64_t i = 0; i < rows; ++i) {
    const T r = gate_of(z, i, ratio), r1 = T(1) - r;
    for (int64_t e = 0; e < E; ++e) o[i * E + e] = r1 * a[i * E + e] + r * b[i * E + e];
  }
}

template <class T>
void cpu_backward(T* da, T* db, T* dz, const T* d_o, const T* a, const T* b, const T* z, double ratio, int64_t rows,
                  int64_t E) {
  for (int64_t i = 0; i < rows; ++i) {
    const T r = gate_of(z, i, ratio), r1 = T(1) - r;
    T dr = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t k = i * E + e;
      da[k] = r1 * d_o[k];
      db[k] = r * d_o[k];
      dr += d_o[k] * (b[k] - a[k]);
    }
    if (dz) dz[i] = dr * r * r1;
  }
}

// The shared checks: a, b and every tensor in `like` contiguous with a's shape and dtype on a's
// device; logits (when given) of that dtype with one element per row; a ratio in [0, 1].
void check_blend(const char* op, const Tensor& a, const Tensor& b,
                 std::initializer_list<std::pair<const char*, const Tensor*>> like, const BlendWeight& w) {
  detail::check_float_input(op, "a", a);
  LCTX_CHECK(a.dim() >= 1, op, ": a ", a.str(), " needs a last dimension");
  check_same_device(op, {&a, &b});
  check_like(op, "b", b, a);
  for (const auto& [name, t] : like) {
    check_same_device(op, {&a, t});
    check_like(op, name, *t, a);
  }
  if (w.logits.defined()) {
    check_same_device(op, {&a, &w.logits});
    check_dtype(op, "logits", w.logits, a.dtype());
    check_contiguous(op, "logits", w.logits);
    LCTX_CHECK(w.logits.numel() * a.size(-1) == a.numel(), op, ": logits ", w.logits.str(), " must hold one per row of ",
               a.str());
  } else {
    LCTX_CHECK(w.ratio >= 0.0 && w.ratio <= 1.0, op, ": ratio ", w.ratio, " must be in [0, 1]");
  }
}

}  // namespace

void blend_forward(Tensor& o, const Tensor& a, const Tensor& b, const BlendWeight& w, Stream s) {
  constexpr const char* op = "blend_forward";
  check_blend(op, a, b, {{"o", &o}}, w);
  if (a.device().is_cuda()) return LCTX_OPS_CUDA(op, a, cuda::blend_forward(o, a, b, w, s));
  const int64_t E = a.size(-1);
  LCTX_DISPATCH_CPU_FLOAT(a.dtype(), op, [&] {
    cpu_forward(o.data<scalar_t>(), a.data<scalar_t>(), b.data<scalar_t>(),
                w.logits.defined() ? w.logits.data<scalar_t>() : nullptr, w.ratio, a.numel() / E, E);
  });
}

void blend_backward(BlendGrads& g, const Tensor& d_o, const Tensor& a, const Tensor& b, const BlendWeight& w,
                    Stream s) {
  constexpr const char* op = "blend_backward";
  check_blend(op, a, b, {{"d_o", &d_o}, {"da", &g.da}, {"db", &g.db}}, w);
  LCTX_CHECK(g.dz.defined() == w.logits.defined(), op, ": dz ", g.dz.str(), " is wanted exactly with logits");
  if (g.dz.defined()) {
    check_same_device(op, {&a, &g.dz});
    check_like(op, "dz", g.dz, w.logits);
  }
  if (a.device().is_cuda()) return LCTX_OPS_CUDA(op, a, cuda::blend_backward(g, d_o, a, b, w, s));
  const int64_t E = a.size(-1);
  LCTX_DISPATCH_CPU_FLOAT(a.dtype(), op, [&] {
    cpu_backward(g.da.data<scalar_t>(), g.db.data<scalar_t>(), g.dz.defined() ? g.dz.data<scalar_t>() : nullptr,
                 d_o.data<scalar_t>(), a.data<scalar_t>(), b.data<scalar_t>(),
                 w.logits.defined() ? w.logits.data<scalar_t>() : nullptr, w.ratio, a.numel() / E, E);
  });
}

}  // namespace lctx::ops
