// Shared by the tests of the sequence-parallel primitives (state_scan, halo, row_gather): the
// layouts they sweep ({1, 2, 3, 4, 8} ring ranks x {zigzag, contiguous}, plus Ulysses pieces,
// one of which splits a zigzag segment) and per-rank data given by formulas of (batch, global
// position, feature), so every rank computes the expected values on its own: token rows, and a
// per-position recurrence h <- alpha ⊙ h + u with its segment summaries and direct states.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "common/expect_error.h"
#include "core/error.h"
#include "core/tensor.h"
#include "dist/layout.h"
#include "dist/state_scan.h"

namespace lctx::test {

struct LayoutCase {
  dist::LayoutKind kind = dist::LayoutKind::zigzag;
  int ring = 1, ulysses = 1;

  int ranks() const { return ring * ulysses; }
  // Segments of 3 tokens under zigzag without Ulysses, 6 under contiguous.
  dist::Layout layout() const { return dist::Layout(kind, 6 * ring * ulysses, ring, ulysses); }
  std::string name() const {
    return std::string(dist::layout_kind_name(kind)) + "_R" + std::to_string(ring) + "_U" + std::to_string(ulysses);
  }
};

inline void PrintTo(const LayoutCase& c, std::ostream* os) { *os << c.name(); }

inline std::vector<LayoutCase> layout_cases() {
  std::vector<LayoutCase> cs;
  for (int R : {1, 2, 3, 4, 8})
    for (auto kind : {dist::LayoutKind::zigzag, dist::LayoutKind::contiguous}) cs.push_back({kind, R, 1});
  // (2, 3): the middle Ulysses piece of each ring rank spans the end of one zigzag chunk and
  // the start of the other, so ranks hold different numbers of segments.
  for (auto [R, U] : {std::pair{1, 2}, {2, 2}, {2, 3}, {4, 2}}) cs.push_back({dist::LayoutKind::zigzag, R, U});
  cs.push_back({dist::LayoutKind::contiguous, 2, 2});
  return cs;
}

// Small integers (exact in every float dtype), distinct over the positions of a test sequence.
inline double token_value(int64_t b, int64_t g, int64_t f) {
  return static_cast<double>((b * 37 + g * 11 + f * 5) % 101 - 50);
}

// This rank's tokens [B, L, *features] of `dtype`: element (b, i, f) is value(b, global
// position of local row i, f), f the flat feature index.
inline Tensor rank_tokens(const dist::Layout& layout, int sp_rank, int64_t B, const Shape& features, DType dtype,
                          const std::function<double(int64_t, int64_t, int64_t)>& value = token_value) {
  const auto pos = layout.positions(sp_rank);
  int64_t F = 1;
  for (int64_t d : features) F *= d;
  std::vector<double> v;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g : pos)
      for (int64_t f = 0; f < F; ++f) v.push_back(value(b, g, f));
  Shape shape{B, static_cast<int64_t>(pos.size())};
  shape.insert(shape.end(), features.begin(), features.end());
  return Tensor::from_vector(shape, v, dtype);
}

// Sum of the elementwise products of two tensors of one shape, in f64.
inline double dot(const Tensor& x, const Tensor& y) {
  const auto a = x.to_vector(), b = y.to_vector();
  EXPECT_EQ(a.size(), b.size()) << x.str() << " . " << y.str();
  double s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) s += a[i] * b[i];
  return s;
}

// h_{g+1} = alpha_g ⊙ h_g + u_g over global positions g, states [B, n, m], alpha [B, n].
struct Recurrence {
  int64_t B = 2, n = 2, m = 3;

  static double alpha(int64_t b, int64_t g, int64_t i) { return 0.5 + ((b * 7 + g * 13 + i * 5) % 17) / 34.0; }
  static double u(int64_t b, int64_t g, int64_t i, int64_t k) {
    return ((b * 11 + g * 3 + i * 7 + k * 5) % 23 - 11) / 11.0;
  }
  static double h0(int64_t b, int64_t i, int64_t k) { return ((b + 2 * i + 3 * k) % 5 - 2) / 2.0; }

  std::vector<double> initial(bool with_h0) const {
    std::vector<double> h(B * n * m, 0.0);
    if (with_h0)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t k = 0; k < m; ++k) h[(b * n + i) * m + k] = h0(b, i, k);
    return h;
  }
  // Applies positions [g0, g0 + len) to h: (in place; the direct sequential recurrence, f64).
  void run(std::vector<double>& h, int64_t g0, int64_t len, std::vector<double>* decay = nullptr) const {
    for (int64_t g = g0; g < g0 + len; ++g)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i) {
          const double a = alpha(b, g, i);
          if (decay) (*decay)[b * n + i] *= a;
          for (int64_t k = 0; k < m; ++k) h[(b * n + i) * m + k] = a * h[(b * n + i) * m + k] + u(b, g, i, k);
        }
  }
  // The state before position g, [B * n * m].
  std::vector<double> state(int64_t g, bool with_h0) const {
    std::vector<double> h = initial(with_h0);
    run(h, 0, g);
    return h;
  }
  Tensor state_tensor(const std::vector<double>& h, DType dtype) const {
    return Tensor::from_vector({B, n, m}, h, dtype);
  }
  // The summary of positions [g0, g0 + len) (from h = 0), in `dtype`.
  dist::Affine summary(int64_t g0, int64_t len, DType dtype) const {
    std::vector<double> e(B * n * m, 0.0), a(B * n, 1.0);
    run(e, g0, len, &a);
    return {Tensor::from_vector({B, n}, a, dtype), Tensor::from_vector({B, n, m}, e, dtype)};
  }
  std::vector<dist::Affine> summaries(const dist::Layout& layout, int sp_rank, DType dtype) const {
    std::vector<dist::Affine> out;
    for (const dist::Segment& s : layout.segments(sp_rank)) out.push_back(summary(s.global_begin, s.length, dtype));
    return out;
  }
};

// gtest name of a (layout, dtype) sweep case.
inline std::string layout_dtype_name(const ::testing::TestParamInfo<std::tuple<LayoutCase, DType>>& info) {
  return std::get<0>(info.param).name() + "_" + std::string(dtype_name(std::get<1>(info.param)));
}

// Every output of one rank's state_scan forward and backward (with h0; d_incoming = the
// summaries' e, d_final = h0) for `rec` on `device`, moved to the CPU, in a fixed order.
inline std::vector<Tensor> scan_outputs(dist::Comm& c, const dist::Layout& layout, const Recurrence& rec, DType dtype,
                                        Device dev, Stream s) {
  auto to_dev = [&](const Tensor& t) { return t.to(dev, s); };
  std::vector<dist::Affine> local;
  std::vector<Tensor> d_in;
  for (const dist::Affine& a : rec.summaries(layout, c.rank(), dtype)) {
    local.push_back({to_dev(a.a), to_dev(a.e)});
    d_in.push_back(to_dev(a.e));  // any values of the state's shape
  }
  const Tensor h0 = to_dev(rec.state_tensor(rec.initial(true), dtype));
  const dist::ScanResult f = dist::state_scan_forward(c, layout, local, h0, s);
  const dist::ScanGrads g = dist::state_scan_backward(c, layout, local, f, d_in, h0, s);
  std::vector<Tensor> out(f.incoming.begin(), f.incoming.end());
  out.push_back(f.final_state);
  for (const dist::Affine& d : g.d_local) {
    out.push_back(d.a);
    out.push_back(d.e);
  }
  out.push_back(g.d_h0);
  synchronize(s);
  for (Tensor& t : out) t = t.to(Device::cpu());
  return out;
}

}  // namespace lctx::test
