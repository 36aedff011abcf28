#include <gtest/gtest.h>

#include <cmath>

#include "core/philox.h"
#include "core/rng.h"

using namespace lctx;

TEST(Philox, KnownAnswer) {
  // Random123 known-answer test for philox4x32-10 with zero counter and key.
  philox::U4 r = philox::generate(0, 0);
  EXPECT_EQ(r.x, 0x6627e8d5u);
  EXPECT_EQ(r.y, 0xe169c58du);
  EXPECT_EQ(r.z, 0xbc57ac4cu);
  EXPECT_EQ(r.w, 0x9b00dbd8u);
}

TEST(Philox, PortableMathMatchesLibm) {
  for (double x : {1.0, 0.5, 0.1, 1e-10, 0.999999, 0.7071, 3e-300}) EXPECT_NEAR(philox::log_unit(x), std::log(x), 1e-14 * std::max(1.0, std::abs(std::log(x)))) << x;
  for (double u = 0; u < 1; u += 0.013) EXPECT_NEAR(philox::cos_2pi(u), std::cos(2 * M_PI * u), 1e-14) << u;
}

TEST(Rng, MomentsAndDeterminism) {
  Tensor a = Tensor::empty({100000}, DType::f64);
  rng_normal(a, 42, 0, 1.0, 2.0);
  auto v = a.to_vector();
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean /= v.size();
  for (double x : v) var += (x - mean) * (x - mean);
  var /= v.size();
  EXPECT_NEAR(mean, 1.0, 0.03);
  EXPECT_NEAR(var, 4.0, 0.08);

  Tensor u = Tensor::empty({100000}, DType::f32);
  rng_uniform(u, 7, 0, -1.0, 3.0);
  for (double x : u.to_vector()) ASSERT_TRUE(x >= -1.0 && x < 3.0) << x;

  // Element i depends only on (seed, offset + i): a fill at offset 10 is the tail of one at 0.
  Tensor b = Tensor::empty({100}, DType::f64), c = Tensor::empty({90}, DType::f64);
  rng_normal(b, 5, 0);
  rng_normal(c, 5, 10);
  auto vb = b.to_vector(), vc = c.to_vector();
  for (int i = 0; i < 90; ++i) ASSERT_EQ(vb[i + 10], vc[i]);
  // Strided destinations draw in row-major order of the view.
  Tensor big = Tensor::empty({10, 20}, DType::f64);
  Tensor half = big.slice(1, 0, 10);
  rng_normal(half, 5, 0);
  auto vh = half.to_vector();
  for (int i = 0; i < 100; ++i) ASSERT_EQ(vh[i], vb[i]);
}
