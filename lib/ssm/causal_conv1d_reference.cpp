// The causal depthwise conv1d on the CPU (f32/f64): one OpenMP task per channel, so the
// backward's sums over batch and tokens (dweight, dbias) and its scatter into dx and d_history
// stay inside a task (no atomics, results independent of the thread count). The backward
// recomputes the pre-activation when the SiLU is fused.
#include <algorithm>

#include "ssm/causal_conv1d_params.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

// One channel of a call. Rows are indexed t in [-(W-1), S): negative rows are the history.
template <class T>
struct Channel {
  const ConvParams& p;
  int c;

  const T* w() const { return static_cast<const T*>(p.weight) + static_cast<int64_t>(c) * p.width; }
  // Offset of row t of sequence b in x (t >= 0) or in the history (t < 0).
  int64_t at(int64_t b, int64_t t) const {
    return t >= 0 ? (b * p.seqlen + t) * p.channels + c : (b * (p.width - 1) + t + p.width - 1) * p.channels + c;
  }
  T row(int64_t b, int64_t t) const {
    if (t >= 0) return static_cast<const T*>(p.x)[at(b, t)];
    return p.history ? static_cast<const T*>(p.history)[at(b, t)] : T(0);
  }
  // The gradient of row t: in dx or in d_history.
  T& grad(int64_t b, int64_t t) const {
    return (t >= 0 ? static_cast<T*>(p.dx) : static_cast<T*>(p.d_history))[at(b, t)];
  }
  T pre(int64_t b, int64_t t) const {
    T s = p.bias ? static_cast<const T*>(p.bias)[c] : T(0);
    for (int k = 0; k < p.width; ++k) s += w()[k] * row(b, t - (p.width - 1) + k);
    return s;
  }
};

template <class T>
void forward(const ConvParams& p) {
#pragma omp parallel for schedule(static)
  for (int c = 0; c < p.channels; ++c) {
    const Channel<T> ch{p, c};
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t t = 0; t < p.seqlen; ++t) {
        const T v = ch.pre(b, t);
        static_cast<T*>(p.y)[ch.at(b, t)] = p.silu ? detail::silu(v) : v;
      }
  }
}

template <class T>
void backward(const ConvParams& p) {
#pragma omp parallel for schedule(static)
  for (int c = 0; c < p.channels; ++c) {
    const Channel<T> ch{p, c};
    T* dw = static_cast<T*>(p.dweight) + static_cast<int64_t>(c) * p.width;
    std::fill_n(dw, p.width, T(0));
    T dbias = T(0);
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t t = -(p.width - 1); t < p.seqlen; ++t) ch.grad(b, t) = T(0);
      for (int64_t t = 0; t < p.seqlen; ++t) {
        const T g = static_cast<const T*>(p.dy)[ch.at(b, t)];
        const T dpre = p.silu ? g * detail::silu_grad(ch.pre(b, t)) : g;
        dbias += dpre;
        for (int k = 0; k < p.width; ++k) {
          const int64_t r = t - (p.width - 1) + k;
          dw[k] += dpre * ch.row(b, r);
          ch.grad(b, r) += ch.w()[k] * dpre;
        }
      }
    }
    if (p.dbias) static_cast<T*>(p.dbias)[c] = dbias;
  }
}

}  // namespace

void causal_conv1d_forward_cpu(const ConvParams& p) {
  if (p.dtype == DType::f64)
    forward<double>(p);
  else
    forward<float>(p);
}

void causal_conv1d_backward_cpu(const ConvParams& p) {
  if (p.dtype == DType::f64)
    backward<double>(p);
  else
    backward<float>(p);
}

}  // namespace lctx::ssm
