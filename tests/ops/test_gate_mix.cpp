// ops::gate_mix on the CPU: values against the definition, f64 finite-difference gradients of
// every branch and of the gate logits, over shapes and branch counts; bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/gradcheck.h"
#include "ops/gate_mix.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::dot;
using lctx::test::randn;

namespace {

struct GateMixCase {
  Shape shape;   // of each branch: [.., H, E]
  int branches;  // n
};

// [.., n H]: one logit per row, branch and head.
Shape logits_shape(const Shape& s, int n) {
  Shape z(s.begin(), s.end() - 1);
  z.back() *= n;
  return z;
}

class GateMixShapes : public ::testing::TestWithParam<GateMixCase> {};

TEST_P(GateMixShapes, ValuesAndGradients) {
  const auto [s, n] = GetParam();
  std::vector<Tensor> b;
  for (int t = 0; t < n; ++t) b.push_back(randn(s, 10 + static_cast<uint64_t>(t)));
  Tensor z = randn(logits_shape(s, n), 1), r = randn(s, 2);
  Tensor o = Tensor::empty(s, DType::f64);
  gate_mix_forward(o, b, z);
  const int64_t H = s[s.size() - 2], E = s.back();
  const auto ov = o.to_vector(), zv = z.to_vector();
  std::vector<std::vector<double>> bv;
  for (const Tensor& t : b) bv.push_back(t.to_vector());
  for (size_t k = 0; k < ov.size(); ++k) {
    const size_t i = k / static_cast<size_t>(H * E), h = k / static_cast<size_t>(E) % static_cast<size_t>(H);
    double want = 0;
    for (size_t t = 0; t < bv.size(); ++t)
      want += bv[t][k] / (1.0 + std::exp(-zv[(i * bv.size() + t) * static_cast<size_t>(H) + h]));
    EXPECT_NEAR(ov[k], want, 1e-14) << "element " << k;
  }
  auto loss = [&] {
    Tensor out = Tensor::empty(s, DType::f64);
    gate_mix_forward(out, b, z);
    return dot(out, r);
  };
  std::vector<Tensor> db;
  for (int t = 0; t < n; ++t) db.push_back(Tensor::empty(s, DType::f64));
  Tensor dz = Tensor::empty(z.shape(), DType::f64);
  gate_mix_backward(db, dz, r, b, z);
  for (int t = 0; t < n; ++t)
    test::expect_grad_close(loss, b[static_cast<size_t>(t)], db[static_cast<size_t>(t)],
                            ("d_branches[" + std::to_string(t) + "]").c_str());
  test::expect_grad_close(loss, z, dz, "d_logits");
}

INSTANTIATE_TEST_SUITE_P(Ops, GateMixShapes,
                         ::testing::Values(GateMixCase{{1, 1}, 1}, GateMixCase{{4, 3, 8}, 3},
                                           GateMixCase{{2, 5, 2, 6}, 3}, GateMixCase{{3, 4, 7}, 1},
                                           GateMixCase{{2, 3, 1, 5}, 2}, GateMixCase{{2, 2, 3}, 10}));

TEST(GateMix, RejectsBadInputs) {
  const Shape s{2, 3, 4, 5};
  const std::vector<Tensor> b = {randn(s, 1, DType::f32), randn(s, 2, DType::f32), randn(s, 3, DType::f32)};
  const Tensor z = randn({2, 3, 12}, 4, DType::f32);
  Tensor o = Tensor::empty(s, DType::f32);
  test::expect_error([&] { gate_mix_forward(o, {}, z); }, {"gate_mix_forward", "at least one branch"});
  Tensor o64 = Tensor::empty(s, DType::f64);
  test::expect_error([&] { gate_mix_forward(o64, b, z); }, {"gate_mix_forward", "o", "f32"});
  const std::vector<Tensor> ragged = {b[0], randn({2, 3, 4, 6}, 5, DType::f32)};
  test::expect_error([&] { gate_mix_forward(o, ragged, z); }, {"gate_mix_forward", "branches[1]", "[2,3,4,5]"});
  test::expect_error([&] { gate_mix_forward(o, b, randn({2, 3, 4}, 6, DType::f32)); },
                     {"gate_mix_forward", "logits", "[2,3,12]", "3 branches"});
  Tensor flat = Tensor::empty({5}, DType::f32);
  const std::vector<Tensor> rows = {randn({5}, 7, DType::f32)};
  test::expect_error([&] { gate_mix_forward(flat, rows, z); }, {"gate_mix_forward", "[.., H, E]"});
  const std::vector<Tensor> half = {randn(s, 8, DType::f32).to(DType::bf16)};
  Tensor ob = Tensor::empty(s, DType::bf16);
  test::expect_error([&] { gate_mix_forward(ob, half, z); }, {"gate_mix_forward", "f32 or f64 on the CPU"});

  std::vector<Tensor> db = {Tensor::empty(s, DType::f32), Tensor::empty(s, DType::f32)};
  Tensor dz = Tensor::empty(z.shape(), DType::f32);
  test::expect_error([&] { gate_mix_backward(db, dz, o, b, z); },
                     {"gate_mix_backward", "2 branch gradients for 3 branches"});
  db.push_back(Tensor::empty(s, DType::f32));
  Tensor dz_bad = Tensor::empty({2, 3, 4}, DType::f32);
  test::expect_error([&] { gate_mix_backward(db, dz_bad, o, b, z); }, {"gate_mix_backward", "d_logits"});
  db[2] = Tensor::empty(s, DType::f64);
  test::expect_error([&] { gate_mix_backward(db, dz, o, b, z); }, {"gate_mix_backward", "d_branches[2]", "f32"});
}

}  // namespace
