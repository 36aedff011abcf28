// CPU linear attention (f64 and f32) against the naive f64 reference for every decay kind,
// normalisation, mask, head grouping and chunk size; f64 finite-difference gradients of every
// input (q, k, v, state0, log-decays); chaining pieces of a sequence through state0 /
// final_state (forward and backward); f32 error against f64; bad input.
#include <gtest/gtest.h>

#include <cstdio>

#include "common/check.h"
#include "common/gradcheck.h"
#include "linear_attn/linear_attn.h"
#include "linear_attn_reference.h"

using namespace lctx;
using namespace lctx::test;
using linear_attn::Decay;
using linear_attn::LinearAttnGrads;
using linear_attn::LinearAttnInputs;
using linear_attn::LinearAttnOptions;
using linear_attn::Mask;
using linear_attn::Normalize;

namespace {

constexpr Normalize kNorm = Normalize::on;

LinearAttnInputs to_dtype(const LinearAttnInputs& in, DType dt) {
  auto conv = [&](const Tensor& t, DType d) { return t.defined() ? t.to(d) : Tensor(); };
  return {conv(in.q, dt), conv(in.k, dt), conv(in.v, dt), conv(in.log_decay, wide_dtype(dt)),
          conv(in.state0, wide_dtype(dt))};
}

// Every decay kind with and without normalisation, both masks, head groupings, chunk sizes that
// do and do not divide S, chunk 1 and chunk > S, no state0.
// The causal case `base` with every decay kind, normalised and not: causal_<decay>[_norm].
std::vector<LinearAttnCase> every_decay(const LinearAttnCase& base) {
  std::vector<LinearAttnCase> v;
  for (Decay d : {Decay::none, Decay::fixed, Decay::learned, Decay::data})
    for (Normalize n : {Normalize::off, kNorm}) {
      const char* dn[] = {"none", "fixed", "learned", "data"};
      LinearAttnCase c = base;
      c.name = std::string("causal_") + dn[static_cast<int>(d)] + (n == kNorm ? "_norm" : "");
      c.decay = d;
      c.norm = n;
      v.push_back(c);
    }
  return v;
}

std::vector<LinearAttnCase> forward_cases() {
  std::vector<LinearAttnCase> v =
      every_decay({.name = "", .B = 2, .S = 37, .Hq = 2, .Hk = 2, .Hv = 2, .Dk = 5, .Dv = 3, .chunk = 8});
  v.push_back({.name = "noncausal", .B = 2, .S = 29, .Dk = 4, .Dv = 6, .mask = Mask::none, .chunk = 8});
  v.push_back(
      {.name = "noncausal_norm", .B = 1, .S = 33, .Dk = 6, .Dv = 2, .mask = Mask::none, .norm = kNorm, .chunk = 5});
  v.push_back({.name = "gqa", .B = 1, .S = 40, .Hq = 4, .Hk = 2, .Hv = 2, .Dk = 4, .Dv = 4, .decay = Decay::fixed,
               .chunk = 16});
  v.push_back({.name = "ssd_groups", .B = 2, .S = 30, .Hq = 1, .Hk = 1, .Hv = 4, .Dk = 3, .Dv = 5,
               .decay = Decay::data, .chunk = 7});
  v.push_back({.name = "mqa_norm_noncausal", .B = 1, .S = 20, .Hq = 3, .Hk = 1, .Hv = 1, .Dk = 4, .Dv = 3,
               .mask = Mask::none, .norm = kNorm});
  v.push_back({.name = "chunk1", .B = 1, .S = 19, .decay = Decay::data, .norm = kNorm, .chunk = 1});
  v.push_back({.name = "chunk_gt_S", .B = 1, .S = 19, .decay = Decay::learned, .chunk = 64});
  v.push_back({.name = "len1", .B = 2, .S = 1, .decay = Decay::data, .chunk = 4});
  v.push_back({.name = "no_state0", .B = 2, .S = 25, .decay = Decay::data, .norm = kNorm, .chunk = 6, .state0 = false});
  // log lambda in [-60, -20]: e^{-A_j} alone would overflow within one chunk.
  v.push_back({.name = "strong_decay", .B = 1, .S = 150, .Dk = 4, .Dv = 4, .decay = Decay::data, .chunk = 64,
               .decay_lo = -60, .decay_hi = -20});
  v.push_back({.name = "weak_decay_long", .B = 1, .S = 300, .Hq = 1, .Hk = 1, .Hv = 1, .Dk = 8, .Dv = 8,
               .decay = Decay::fixed, .norm = kNorm, .chunk = 64, .decay_lo = -1e-3, .decay_hi = -1e-4});
  return v;
}

class LinearAttnCpu : public testing::TestWithParam<LinearAttnCase> {};

TEST_P(LinearAttnCpu, MatchesNaive) {
  const LinearAttnCase& c = GetParam();
  const LinearAttnInputs in = make_la_inputs(c, 7);
  const NaiveLinearAttn ref = naive_linear_attn(c, in);
  for (DType dt : {DType::f64, DType::f32}) {
    const std::string what = c.name + " " + std::string(dtype_name(dt));
    const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
    const auto out = linear_attn::linear_attn_forward(to_dtype(in, dt), c.opts());
    EXPECT_EQ(out.o.dtype(), dt) << what;
    EXPECT_EQ(out.final_state.dtype(), wide_dtype(dt)) << what;
    EXPECT_EQ(out.o.shape(), ref.o.shape()) << what;
    EXPECT_LE(rel_error(out.o, ref.o), tol) << what;
    EXPECT_LE(rel_error(out.final_state, ref.final_state), tol) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, LinearAttnCpu, testing::ValuesIn(forward_cases()), la_case_name);

// L = sum(o * W) + sum(final_state * Wf); dout = W, d_final_state = Wf.
struct Loss {
  Tensor w, wf;
  Loss(const LinearAttnCase& c, uint64_t seed)
      : w(Tensor::empty({c.B, c.S, c.H(), c.Dv}, DType::f64)),
        wf(Tensor::empty({c.B, c.H(), c.Dk, c.cols()}, DType::f64)) {
    rng_normal(w, seed, 0);
    rng_normal(wf, seed + 1, 0);
  }
  double operator()(const LinearAttnInputs& in, const LinearAttnOptions& opts) const {
    const auto out = linear_attn::linear_attn_forward(in, opts);
    double s = 0;
    for (auto [a, b] : {std::pair{&out.o, &w}, std::pair{&out.final_state, &wf}}) {
      const auto va = a->to_vector(), vb = b->to_vector();
      for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
    }
    return s;
  }
};

class LinearAttnGradCheck : public testing::TestWithParam<LinearAttnCase> {};

TEST_P(LinearAttnGradCheck, FiniteDifferences) {
  const LinearAttnCase& c = GetParam();
  LinearAttnInputs in = make_la_inputs(c, 13);
  const Loss loss(c, 17);
  const auto g = linear_attn::linear_attn_backward(in, loss.w, loss.wf, c.opts());
  auto f = [&] { return loss(in, c.opts()); };
  expect_grad_close(f, in.q, g.dq, "dq", 1e-6, 1e-7);
  expect_grad_close(f, in.k, g.dk, "dk", 1e-6, 1e-7);
  expect_grad_close(f, in.v, g.dv, "dv", 1e-6, 1e-7);
  if (c.state0) expect_grad_close(f, in.state0, g.d_state0, "d_state0", 1e-6, 1e-7);
  if (c.decay == Decay::learned || c.decay == Decay::data)
    expect_grad_close(f, in.log_decay, g.d_log_decay, "d_log_decay", 1e-6, 1e-7);
  else
    EXPECT_FALSE(g.d_log_decay.defined());
}

std::vector<LinearAttnCase> grad_cases() {
  std::vector<LinearAttnCase> v =
      every_decay({.name = "", .B = 2, .S = 11, .Hq = 2, .Hk = 2, .Hv = 2, .Dk = 3, .Dv = 2, .chunk = 4});
  v.push_back({.name = "noncausal", .B = 1, .S = 9, .Dk = 3, .Dv = 2, .mask = Mask::none, .chunk = 4});
  v.push_back(
      {.name = "noncausal_norm", .B = 2, .S = 8, .Dk = 2, .Dv = 3, .mask = Mask::none, .norm = kNorm, .chunk = 3});
  v.push_back({.name = "gqa_learned_norm", .B = 1, .S = 10, .Hq = 4, .Hk = 2, .Hv = 2, .Dk = 2, .Dv = 2,
               .decay = Decay::learned, .norm = kNorm, .chunk = 3});
  v.push_back({.name = "ssd_groups", .B = 1, .S = 10, .Hq = 1, .Hk = 1, .Hv = 3, .Dk = 2, .Dv = 2,
               .decay = Decay::data, .chunk = 4});
  v.push_back(
      {.name = "chunk1_no_state0", .B = 1, .S = 7, .decay = Decay::data, .norm = kNorm, .chunk = 1, .state0 = false});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Small, LinearAttnGradCheck, testing::ValuesIn(grad_cases()), la_case_name);

// The sequence cut into pieces, each called with the previous piece's final state as state0
// (q/k/v/log_decay as strided sequence slices), equals one call over the whole sequence; the
// backward chained from the last piece (d_final_state of a piece = d_state0 of the next) gives
// the whole call's gradients. Causal only: a non-causal call reads the whole sequence.
class LinearAttnChain : public testing::TestWithParam<LinearAttnCase> {};

TEST_P(LinearAttnChain, PiecesEqualWhole) {
  const LinearAttnCase& c = GetParam();
  const LinearAttnInputs in = make_la_inputs(c, 21);
  const Loss loss(c, 23);
  const auto whole = linear_attn::linear_attn_forward(in, c.opts());
  const auto gwhole = linear_attn::linear_attn_backward(in, loss.w, loss.wf, c.opts());
  const std::vector<int64_t> cuts{0, c.S / 3 + 1, c.S / 2 + 2, c.S};
  auto piece = [&](int i) {
    const int64_t lo = cuts[i], hi = cuts[i + 1];
    LinearAttnInputs p{in.q.slice(1, lo, hi), in.k.slice(1, lo, hi), in.v.slice(1, lo, hi), in.log_decay, {}};
    if (c.decay == Decay::data) p.log_decay = in.log_decay.slice(1, lo, hi);
    return p;
  };
  const int n = static_cast<int>(cuts.size()) - 1;
  std::vector<Tensor> states{in.state0};
  Tensor o = Tensor::empty(whole.o.shape(), DType::f64);
  for (int i = 0; i < n; ++i) {
    LinearAttnInputs p = piece(i);
    p.state0 = states.back();
    const auto out = linear_attn::linear_attn_forward(p, c.opts());
    o.slice(1, cuts[i], cuts[i + 1]).copy_from(out.o);
    states.push_back(out.final_state);
  }
  EXPECT_LE(rel_error(o, whole.o), 1e-13);
  EXPECT_LE(rel_error(states.back(), whole.final_state), 1e-13);

  LinearAttnGrads acc{Tensor::empty(in.q.shape(), DType::f64), Tensor::empty(in.k.shape(), DType::f64),
                      Tensor::empty(in.v.shape(), DType::f64), Tensor(), Tensor()};
  if (c.decay == Decay::data) acc.d_log_decay = Tensor::empty(in.log_decay.shape(), DType::f64);
  if (c.decay == Decay::learned) acc.d_log_decay = Tensor::zeros(in.log_decay.shape(), DType::f64);
  Tensor d_state = loss.wf;
  for (int i = n - 1; i >= 0; --i) {
    LinearAttnInputs p = piece(i);
    p.state0 = states[i];
    const auto g = linear_attn::linear_attn_backward(p, loss.w.slice(1, cuts[i], cuts[i + 1]), d_state, c.opts());
    for (auto [dst, src] : {std::pair{&acc.dq, &g.dq}, std::pair{&acc.dk, &g.dk}, std::pair{&acc.dv, &g.dv}})
      dst->slice(1, cuts[i], cuts[i + 1]).copy_from(*src);
    if (c.decay == Decay::data) acc.d_log_decay.slice(1, cuts[i], cuts[i + 1]).copy_from(g.d_log_decay);
    if (c.decay == Decay::learned) acc.d_log_decay.add_from(g.d_log_decay);
    d_state = g.d_state0;
  }
  EXPECT_LE(rel_error(acc.dq, gwhole.dq), 1e-12);
  EXPECT_LE(rel_error(acc.dk, gwhole.dk), 1e-12);
  EXPECT_LE(rel_error(acc.dv, gwhole.dv), 1e-12);
  EXPECT_LE(rel_error(d_state, gwhole.d_state0), 1e-12);
  if (acc.d_log_decay.defined()) {
    EXPECT_LE(rel_error(acc.d_log_decay, gwhole.d_log_decay), 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Pieces, LinearAttnChain,
    testing::Values(LinearAttnCase{.name = "plain", .B = 2, .S = 41, .Dk = 4, .Dv = 3, .chunk = 8},
                    LinearAttnCase{.name = "learned_norm", .B = 1, .S = 50, .Dk = 3, .Dv = 4, .decay = Decay::learned,
                                   .norm = kNorm, .chunk = 16},
                    LinearAttnCase{.name = "data", .B = 2, .S = 45, .Hq = 1, .Hk = 1, .Hv = 2, .Dk = 4, .Dv = 2,
                                   .decay = Decay::data, .chunk = 7},
                    LinearAttnCase{.name = "data_norm_no_state0", .B = 1, .S = 33, .decay = Decay::data,
                                   .norm = kNorm, .chunk = 5, .state0 = false}),
    la_case_name);

// Every chunk size gives the same forward and backward (f64).
TEST(LinearAttnChunks, ChunkSizeDoesNotChangeResults) {
  const LinearAttnCase base{.name = "chunks", .B = 1, .S = 53, .Dk = 4, .Dv = 3, .decay = Decay::data, .norm = kNorm};
  const LinearAttnInputs in = make_la_inputs(base, 31);
  const Loss loss(base, 37);
  LinearAttnOptions ref_opts = base.opts();
  ref_opts.chunk = 64;
  const auto ref = linear_attn::linear_attn_forward(in, ref_opts);
  const auto gref = linear_attn::linear_attn_backward(in, loss.w, loss.wf, ref_opts);
  for (int64_t chunk : {1, 2, 5, 16, 52, 53, 54, 1000}) {
    LinearAttnOptions o = base.opts();
    o.chunk = chunk;
    const auto out = linear_attn::linear_attn_forward(in, o);
    const auto g = linear_attn::linear_attn_backward(in, loss.w, loss.wf, o);
    EXPECT_LE(rel_error(out.o, ref.o), 1e-13) << chunk;
    EXPECT_LE(rel_error(out.final_state, ref.final_state), 1e-13) << chunk;
    for (auto [name, a, b] : {std::tuple{"dq", &g.dq, &gref.dq}, std::tuple{"dk", &g.dk, &gref.dk},
                              std::tuple{"dv", &g.dv, &gref.dv}, std::tuple{"d_state0", &g.d_state0, &gref.d_state0},
                              std::tuple{"d_log_decay", &g.d_log_decay, &gref.d_log_decay}})
      EXPECT_LE(rel_error(*a, *b), 1e-12) << name << " chunk " << chunk;
  }
}

// An empty sequence passes the state through: final_state = state0, d_state0 = d_final_state.
TEST(LinearAttnEdge, EmptySequence) {
  const LinearAttnCase c{.name = "empty", .B = 2, .S = 0, .decay = Decay::data, .norm = kNorm};
  const LinearAttnInputs in = make_la_inputs(c, 41);
  const Loss loss(c, 43);
  const auto out = linear_attn::linear_attn_forward(in, c.opts());
  EXPECT_EQ(out.o.numel(), 0);
  EXPECT_EQ(max_abs_diff(out.final_state, in.state0), 0.0);
  const auto g = linear_attn::linear_attn_backward(in, loss.w, loss.wf, c.opts());
  EXPECT_EQ(max_abs_diff(g.d_state0, loss.wf), 0.0);
}

// f32 against f64 over a longer sequence, without decay and with per-token decay, normalised
// and not: the error is printed and bounded.
TEST(LinearAttnPrecision, F32AgainstF64) {
  for (auto [d, n] : {std::pair{Decay::none, Normalize::off}, std::pair{Decay::none, kNorm},
                      std::pair{Decay::data, Normalize::off}, std::pair{Decay::data, kNorm}}) {
    const LinearAttnCase c{.name = "precision", .B = 1, .S = 4096, .Hq = 2, .Hk = 2, .Hv = 2, .Dk = 16, .Dv = 16,
                           .decay = d, .norm = n, .chunk = 64, .decay_lo = -0.05, .decay_hi = 0.0};
    const LinearAttnInputs in = make_la_inputs(c, 51);
    const Loss loss(c, 53);
    const auto o64 = linear_attn::linear_attn_forward(in, c.opts());
    const auto g64 = linear_attn::linear_attn_backward(in, loss.w, loss.wf, c.opts());
    const LinearAttnInputs in32 = to_dtype(in, DType::f32);
    const auto o32 = linear_attn::linear_attn_forward(in32, c.opts());
    const auto g32 = linear_attn::linear_attn_backward(in32, loss.w.to(DType::f32), loss.wf.to(DType::f32), c.opts());
    const double tol = 1e-5;
    for (auto [name, a, b] :
         {std::tuple{"o", &o32.o, &o64.o}, std::tuple{"final_state", &o32.final_state, &o64.final_state},
          std::tuple{"dq", &g32.dq, &g64.dq}, std::tuple{"dk", &g32.dk, &g64.dk}, std::tuple{"dv", &g32.dv, &g64.dv},
          std::tuple{"d_state0", &g32.d_state0, &g64.d_state0},
          std::tuple{"d_log_decay", &g32.d_log_decay, &g64.d_log_decay}}) {
      if (!b->defined()) continue;  // no decay: no d_log_decay
      const double err = rel_error(*a, *b);
      std::printf("f32 vs f64, S=%lld, decay %-4s %s: %-11s rel error %.2e\n", static_cast<long long>(c.S),
                  d == Decay::data ? "data" : "none", n == kNorm ? "normalised" : "plain     ", name, err);
      EXPECT_LE(err, tol) << name;
    }
  }
}

TEST(LinearAttnErrors, BadInputsAreClearErrors) {
  const LinearAttnCase c{.name = "bad", .B = 2, .S = 10, .Hq = 2, .Hk = 2, .Hv = 2, .Dk = 4, .Dv = 3,
                         .decay = Decay::learned, .norm = kNorm};
  const LinearAttnInputs good = make_la_inputs(c, 61);
  auto fwd = [&](LinearAttnInputs in, LinearAttnOptions o) { return [=] { linear_attn::linear_attn_forward(in, o); }; };
  LinearAttnInputs in = good;
  in.state0 = Tensor::zeros({2, 2, 4, 3}, DType::f64);  // normalised: Dv + 1 = 4 columns
  expect_error(fwd(in, c.opts()), {"linear_attn_forward", "state0", "[2,2,4,3]", "expected [2,2,4,4]"});
  in = good;
  in.state0 = good.state0.to(DType::f32);
  expect_error(fwd(in, c.opts()), {"state0", "f64"});
  for (int64_t dk : {0, 1025}) {  // head dims the CPU refuses
    in = good;
    in.q = Tensor::zeros({2, 10, 2, dk}, DType::f64);
    in.k = Tensor::zeros({2, 10, 2, dk}, DType::f64);
    in.state0 = Tensor();
    expect_error(fwd(in, c.opts()), {"head dims 1..1024", "Dk = " + std::to_string(dk)});
  }
  in = good;
  in.v = Tensor::zeros({2, 10, 2, 2000}, DType::f64);
  in.state0 = Tensor();
  expect_error(fwd(in, c.opts()), {"head dims", "Dv = 2000", "f64[2,10,2,2000]"});
  in = to_dtype(good, DType::f32);
  for (Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(DType::bf16);
  expect_error(fwd(in, c.opts()), {"f32 and f64", "bf16[2,10,2,4]"});
  in = good;
  in.k = Tensor::zeros({2, 10, 3, 4}, DType::f64);
  expect_error(fwd(in, c.opts()), {"head counts", "divide"});
  in = good;
  in.k = Tensor::zeros({2, 11, 2, 4}, DType::f64);
  expect_error(fwd(in, c.opts()), {"k has shape [2,11,2,4], expected [2,10,2,4]"});
  in = good;
  in.log_decay = Tensor::zeros({2, 10, 2}, DType::f64);
  expect_error(fwd(in, c.opts()), {"log_decay has shape [2,10,2], expected [2]"});
  LinearAttnOptions o = c.opts();
  o.decay = Decay::data;
  expect_error(fwd(good, o), {"log_decay has shape [2], expected [2,10,2]"});
  o = c.opts();
  o.decay = Decay::none;
  expect_error(fwd(good, o), {"log_decay", "decay is none"});
  o = c.opts();
  o.mask = Mask::none;
  expect_error(fwd(good, o), {"non-causal", "no decay"});
  in = good;
  in.log_decay = Tensor();
  expect_error(fwd(in, c.opts()), {"log_decay is undefined"});
  o = c.opts();
  o.chunk = 0;
  expect_error(fwd(good, o), {"chunk 0"});
  o = c.opts();
  o.eps = -1;
  expect_error(fwd(good, o), {"eps"});
  const Tensor dout = Tensor::zeros({2, 10, 2, 3}, DType::f64);
  expect_error(
      [&] {
        linear_attn::linear_attn_backward(good, dout, Tensor::zeros({2, 2, 4, 3}, DType::f64), c.opts());
      },
      {"linear_attn_backward", "d_final_state has shape [2,2,4,3], expected [2,2,4,4]"});
  expect_error(
      [&] {
        linear_attn::linear_attn_backward(good, Tensor::zeros({2, 10, 2, 4}, DType::f64), Tensor(), c.opts());
      },
      {"dout has shape [2,10,2,4], expected [2,10,2,3]"});
}

}  // namespace
