// ParamTable: specs laid out in declaration order in one flat buffer, each initialised as
// declared (ones, zeros, normal, residual-scaled normal, custom) from its own Philox offset.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "mixers/param_table.h"

using namespace lctx;
using namespace lctx::mixers;

namespace {

double mean_sq(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector()) s += v * v;
  return s / static_cast<double>(t.numel());
}

TEST(ParamTable, LayoutAndDeclaredInit) {
  ParamTable t;
  const std::vector<ParamSpec> layer = {
      {.name = "norm", .shape = {8}, .decay = Decay::none, .init = Init::ones},
      {.name = "w", .shape = {64, 64}},
      {.name = "wo", .shape = {64, 64}, .init = Init::normal_residual},
      {.name = "bias", .shape = {5}, .decay = Decay::none, .init = Init::zeros},
      {.name = "A_log", .shape = {4}, .decay = Decay::none, .init = Init::custom,
       .custom = [](Tensor& m, const InitContext&) {
         std::vector<double> v;
         for (int i = 0; i < 4; ++i) v.push_back(std::log(1.0 + i));
         m.copy_from(Tensor::from_vector({4}, v, DType::f32));
       }},
  };
  EXPECT_EQ(t.add("layers.0.", layer), 0u);
  EXPECT_EQ(t.add({.name = "head", .shape = {3, 2}}), layer.size());
  t.allocate(Device::cpu(), DType::f32, DType::f32);
  t.init({.seed = 5, .init_std = 0.1, .n_layers = 8});
  const auto& P = t.params();
  ASSERT_EQ(P.size(), 6u);
  EXPECT_EQ(P[0].name, "layers.0.norm");
  EXPECT_EQ(P[5].name, "head");
  EXPECT_EQ(t.numel(), 8 + 2 * 64 * 64 + 5 + 4 + 6);
  EXPECT_EQ(P[0].master.to_vector(), std::vector<double>(8, 1.0));
  EXPECT_EQ(P[3].master.to_vector(), std::vector<double>(5, 0.0));
  EXPECT_NEAR(P[4].master.to_vector()[3], std::log(4.0), 1e-6);
  EXPECT_NEAR(std::sqrt(mean_sq(P[1].master)), 0.1, 0.01);
  EXPECT_NEAR(std::sqrt(mean_sq(P[2].master)), 0.1 / 4.0, 0.0025);  // / sqrt(2 * 8)
  EXPECT_EQ(P[1].decay, Decay::weight);
  EXPECT_EQ(P[0].decay, Decay::none);
  // Views into the flat buffers; parameter i draws from offset i << 40.
  EXPECT_EQ(P[1].master.raw(), static_cast<char*>(t.flat_params().raw()) + 8 * sizeof(float));
  Tensor expect = Tensor::empty({64, 64}, DType::f32);
  rng_normal(expect, 5, uint64_t{1} << 40, 0.0, 0.1);
  EXPECT_EQ(P[1].master.to_vector(), expect.to_vector());
  EXPECT_EQ(t.flat_grads().to_vector(), std::vector<double>(static_cast<size_t>(t.numel()), 0.0));
}

TEST(ParamTable, ComputeCopyAndErrors) {
  ParamTable t;
  t.add({.name = "w", .shape = {2, 2}});
  t.allocate(Device::cpu(), DType::f64, DType::f64);
  EXPECT_EQ(t.params()[0].compute.raw(), t.params()[0].master.raw());  // same dtype: the master itself
  EXPECT_THROW(t.add({.name = "late", .shape = {1}}), Error);
  ParamTable c;
  c.add({.name = "x", .shape = {1}, .init = Init::custom});
  c.allocate(Device::cpu(), DType::f32, DType::f32);
  EXPECT_THROW(c.init({}), Error);  // Init::custom without an initialiser
}

}  // namespace
