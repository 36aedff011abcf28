// Feature maps (feature_map.h): the checks, the dispatch by device, and the CPU half: one OpenMP
// loop over the rows (batch, position, head) of x for every map and direction; FAVOR+
// recomputes its exponents in the backward. CUDA: feature_map.cu.
#include "linear_attn/feature_map.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"

namespace lctx::linear_attn {

namespace {

// A [B, S, H, D] tensor with a contiguous last dimension.
void check_bshd(const char* op, const char* name, const Tensor& t) {
  LCTX_CHECK(t.defined() && t.dim() == 4, op, ": ", name, " ", t.str(), " must be [B, S, H, D]");
  LCTX_CHECK(t.strides()[3] == 1 || t.size(3) <= 1, op, ": ", name, " ", t.str(),
             " needs a contiguous last (head_dim) dimension");
}

// The checks of x and the map shared by every entry point; returns the FAVOR+ input scale.
double check_map(const char* op, const Tensor& x, const FeatureMap& fm, const Tensor& stabiliser) {
  check_bshd(op, "x", x);
  if (x.device().is_cpu()) {
    LCTX_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, op, ": the CPU supports f32 and f64, got x ",
               x.str());
  } else {
#ifndef LCTX_HAVE_CUDA
    LCTX_FAIL(op, ": x ", x.str(), " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
    LCTX_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16 || x.dtype() == DType::f16, op,
               ": CUDA supports f32, bf16 and f16, got x ", x.str());
  }
  if (fm.kind != FeatureKind::favor) {
    LCTX_CHECK(!stabiliser.defined(), op, ": a stabiliser ", stabiliser.str(), " is for the favor map only");
    return 1.0;
  }
  const Tensor& w = fm.projection;
  LCTX_CHECK(w.defined() && w.dim() == 2 && w.size(1) == x.size(3) && w.size(0) >= 1, op,
             ": the favor map needs projection [m, D] with D = ", x.size(3), " (x ", x.str(), "), got ",
             w.defined() ? w.str() : std::string("undefined"));
  check_dtype(op, "projection", w, wide_dtype(x.dtype()));
  check_contiguous(op, "projection", w);
  check_same_device(op, {&x, &w});
  if (stabiliser.defined()) {
    check_shape(op, "stabiliser", stabiliser, {x.size(0), x.size(2)});
    check_dtype(op, "stabiliser", stabiliser, wide_dtype(x.dtype()));
    check_contiguous(op, "stabiliser", stabiliser);
    check_same_device(op, {&x, &stabiliser});
  }
  LCTX_CHECK(fm.input_scale >= 0.0 && std::isfinite(fm.input_scale), op, ": input_scale ", fm.input_scale,
             " must be finite and >= 0 (0 = D^-1/4)");
  return fm.input_scale > 0.0 ? fm.input_scale : std::pow(static_cast<double>(x.size(3)), -0.25);
}

// Calls f(row, b, h, x_row) for every row of x [B, S, H, D]: the work-sharing loop of the
// caller's parallel region (per-thread buffers live there). row is the row-major index
// (b * S + s) * H + h, the row of a contiguous [B, S, H, *] output.
template <class T, class F>
void for_each_row(const Tensor& x, F&& f) {
  const int64_t S = x.size(1), H = x.size(2), rows = x.size(0) * S * H;
  const T* base = x.data<T>();
  const auto& st = x.strides();
#pragma omp for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (S * H), s = r / H % S, h = r % H;
    f(r, b, h, base + b * st[0] + s * st[1] + h * st[2]);
  }
}

// FAVOR+ exponents of one row: u_i = w_i . x~ - |x~|^2 / 2 (x~ = scale * x), i < m.
template <class T>
void favor_exponents(T* u, const T* x, const T* w, int64_t m, int64_t D, T scale) {
  T sq = 0;
  for (int64_t d = 0; d < D; ++d) sq += x[d] * x[d];
  const T half = scale * scale * sq / 2;
  for (int64_t i = 0; i < m; ++i) {
    T dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += w[i * D + d] * x[d];
    u[i] = scale * dot - half;
  }
}

// The stabiliser of a row: given (keys, [B, H]) or the row's max exponent (queries).
template <class T>
T favor_offset(const T* u, int64_t m, const T* given, int64_t b, int64_t h, int64_t H) {
  return given ? given[b * H + h] : *std::max_element(u, u + m);
}

template <class T>
void forward(const Tensor& x, const FeatureMap& fm, const Tensor& stab, double scale, Tensor& phi) {
  const int64_t D = x.size(3), H = x.size(2);
  T* out = phi.data<T>();
  if (fm.kind != FeatureKind::favor) {
#pragma omp parallel
    for_each_row<T>(x, [&](int64_t r, int64_t, int64_t, const T* xr) {
      for (int64_t d = 0; d < D; ++d) {
        const T v = xr[d];
        out[r * D + d] = fm.kind == FeatureKind::identity ? v
                         : fm.kind == FeatureKind::relu   ? std::max(v, T(0))
                         : v > 0                          ? v + 1
                                                          : std::exp(v);
      }
    });
    return;
  }
  const int64_t m = fm.projection.size(0);
  const T* w = fm.projection.data<T>();
  const T* given = stab.defined() ? stab.data<T>() : nullptr;
  const T norm = T(1) / std::sqrt(static_cast<T>(m));
#pragma omp parallel
  for_each_row<T>(x, [&](int64_t r, int64_t b, int64_t h, const T* xr) {
    T* u = out + r * m;
    favor_exponents(u, xr, w, m, D, static_cast<T>(scale));
    const T c = favor_offset(u, m, given, b, h, H);
    for (int64_t i = 0; i < m; ++i) u[i] = std::exp(u[i] - c) * norm;
  });
}

// Backward. Elementwise maps: dx = dphi * phi'(x). FAVOR+ with g_i = dphi_i phi_i:
// dx = scale (sum_i g_i w_i - (sum_i g_i) r), r = x~ for a given stabiliser and w_{argmax u}
// for the per-row max (d(u_i - u_max)/dx~ = w_i - w_max).
template <class T>
void backward(const Tensor& x, const Tensor& dphi, const FeatureMap& fm, const Tensor& stab, double scale, Tensor& dx) {
  const int64_t D = x.size(3), H = x.size(2);
  T* out = dx.data<T>();
  const T* dp = dphi.data<T>();
  if (fm.kind != FeatureKind::favor) {
#pragma omp parallel
    for_each_row<T>(x, [&](int64_t r, int64_t, int64_t, const T* xr) {
      for (int64_t d = 0; d < D; ++d) {
        const T v = xr[d];
        const T deriv = fm.kind == FeatureKind::identity ? T(1)
                        : v > 0                          ? T(1)
                        : fm.kind == FeatureKind::relu   ? T(0)
                                                         : std::exp(v);
        out[r * D + d] = dp[r * D + d] * deriv;
      }
    });
    return;
  }
  const int64_t m = fm.projection.size(0);
  const T* w = fm.projection.data<T>();
  const T* given = stab.defined() ? stab.data<T>() : nullptr;
  const T norm = T(1) / std::sqrt(static_cast<T>(m)), sc = static_cast<T>(scale);
#pragma omp parallel
  {
    std::vector<T> u(m);
    for_each_row<T>(x, [&](int64_t r, int64_t b, int64_t h, const T* xr) {
      favor_exponents(u.data(), xr, w, m, D, sc);
      const int64_t imax = std::max_element(u.begin(), u.end()) - u.begin();
      const T c = favor_offset(u.data(), m, given, b, h, H);
      T* dxr = out + r * D;
      std::fill_n(dxr, D, T(0));
      T gsum = 0;
      for (int64_t i = 0; i < m; ++i) {
        const T g = dp[r * m + i] * std::exp(u[i] - c) * norm;
        gsum += g;
        for (int64_t d = 0; d < D; ++d) dxr[d] += g * w[i * D + d];
      }
      for (int64_t d = 0; d < D; ++d) dxr[d] = sc * (dxr[d] - gsum * (given ? sc * xr[d] : w[imax * D + d]));
    });
  }
}

// out[b, h] = the max over positions and features of the exponents of k's rows, rounded up.
template <class T>
void key_stabiliser(const Tensor& k, const FeatureMap& fm, double scale, Tensor& out) {
  const int64_t S = k.size(1), H = k.size(2), D = k.size(3), m = fm.projection.size(0);
  const T* w = fm.projection.data<T>();
  const T* kp = k.data<T>();
  T* o = out.data<T>();
  const auto& st = k.strides();
#pragma omp parallel
  {
    std::vector<T> u(m);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < out.numel(); ++bh) {
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t t = 0; t < S; ++t) {
        favor_exponents(u.data(), kp + bh / H * st[0] + t * st[1] + bh % H * st[2], w, m, D, static_cast<T>(scale));
        mx = std::max(mx, *std::max_element(u.begin(), u.end()));
      }
      o[bh] = std::ceil(mx);
    }
  }
}

// LCTX_CUDA_HALF(call): runs the CUDA half in a CUDA build (check_map has refused CUDA tensors
// in a CPU-only build, where the call is left out).
#ifdef LCTX_HAVE_CUDA
#define LCTX_CUDA_HALF(call) call
#else
#define LCTX_CUDA_HALF(call) (void)s
#endif

}  // namespace

Tensor favor_projection(int64_t head_dim, uint64_t seed, int64_t features, DType dtype) {
  const char* op = "favor_projection";
  LCTX_CHECK(head_dim >= 1 && features >= 1, op, ": head_dim ", head_dim, " and features ", features, " must be >= 1");
  const int64_t D = head_dim, blocks = (features + D - 1) / D;
  Tensor gauss = Tensor::empty({blocks * D, D}, DType::f64), lengths = Tensor::empty({features, D}, DType::f64);
  rng_normal(gauss, seed, 0);
  rng_normal(lengths, seed, static_cast<uint64_t>(blocks * D * D));
  double* g = gauss.data<double>();
  // Modified Gram-Schmidt on the rows of each D x D block: orthonormal rows.
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t i = blk * D; i < blk * D + D; ++i) {
      double* gi = g + i * D;
      for (int64_t j = blk * D; j < i; ++j) {
        const double* gj = g + j * D;
        double proj = 0;
        for (int64_t d = 0; d < D; ++d) proj += gi[d] * gj[d];
        for (int64_t d = 0; d < D; ++d) gi[d] -= proj * gj[d];
      }
      double nrm = 0;
      for (int64_t d = 0; d < D; ++d) nrm += gi[d] * gi[d];
      nrm = std::sqrt(nrm);
      for (int64_t d = 0; d < D; ++d) gi[d] /= nrm;
    }
  const double* len = lengths.data<double>();
  std::vector<double> w(features * D);
  for (int64_t i = 0; i < features; ++i) {
    double l2 = 0;
    for (int64_t d = 0; d < D; ++d) l2 += len[i * D + d] * len[i * D + d];
    for (int64_t d = 0; d < D; ++d) w[i * D + d] = g[i * D + d] * std::sqrt(l2);
  }
  return Tensor::from_vector({features, D}, w, dtype);
}

int64_t feature_dim(const FeatureMap& fm, int64_t head_dim) {
  return fm.kind == FeatureKind::favor && fm.projection.defined() ? fm.projection.size(0) : head_dim;
}

Tensor favor_key_stabiliser(const Tensor& k, const FeatureMap& fm, Stream s) {
  const char* op = "favor_key_stabiliser";
  LCTX_CHECK(fm.kind == FeatureKind::favor, op, ": the map is not favor");
  const double scale = check_map(op, k, fm, Tensor());
  Tensor out = Tensor::empty({k.size(0), k.size(2)}, wide_dtype(k.dtype()), k.device());
  if (k.device().is_cuda()) {
    LCTX_CUDA_HALF(detail::favor_key_stabiliser_cuda(out, k, fm, scale, s));
    return out;
  }
  LCTX_DISPATCH_CPU_FLOAT(k.dtype(), op, [&] { key_stabiliser<scalar_t>(k, fm, scale, out); });
  return out;
}

Tensor feature_map_forward(const Tensor& x, const FeatureMap& fm, const Tensor& stabiliser, Stream s) {
  const char* op = "feature_map_forward";
  const double scale = check_map(op, x, fm, stabiliser);
  Tensor phi = Tensor::empty({x.size(0), x.size(1), x.size(2), feature_dim(fm, x.size(3))}, x.dtype(), x.device());
  if (x.device().is_cuda()) {
    LCTX_CUDA_HALF(detail::feature_map_forward_cuda(phi, x, fm, stabiliser, scale, s));
    return phi;
  }
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] { forward<scalar_t>(x, fm, stabiliser, scale, phi); });
  return phi;
}

Tensor feature_map_backward(const Tensor& x, const Tensor& dphi, const FeatureMap& fm, const Tensor& stabiliser,
                            Stream s) {
  const char* op = "feature_map_backward";
  const double scale = check_map(op, x, fm, stabiliser);
  check_shape(op, "dphi", dphi, {x.size(0), x.size(1), x.size(2), feature_dim(fm, x.size(3))});
  check_dtype(op, "dphi", dphi, x.dtype());
  check_contiguous(op, "dphi", dphi);
  check_same_device(op, {&x, &dphi});
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
    LCTX_CUDA_HALF(detail::feature_map_backward_cuda(dx, x, dphi, fm, stabiliser, scale, s));
    return dx;
  }
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] { backward<scalar_t>(x, dphi, fm, stabiliser, scale, dx); });
  return dx;
}

}  // namespace lctx::linear_attn
