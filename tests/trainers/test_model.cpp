// The model's explicit backward against finite differences of its loss (directional
// derivatives in f32 on a tiny model), and the invariances the trainer relies on: activation
// checkpointing and sequence parallelism (ring over simulated ranks) give the same gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>

#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/sim_comm.h"
#include "trainers/config.h"
#include "trainers/data.h"
#include "trainers/model.h"
#include "trainers/topology.h"

using namespace lctx;
using namespace lctx::train;

namespace {

// model_extra: more lines of the model section; extra: other sections.
Config tiny(const std::string& model_extra = "", const std::string& extra = "") {
  return parse_config(
      "model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n  init_std: 0.2\n" +
      model_extra + "data:\n  source: passkey\n  seq_len: 32\n  batch_size: 2\n  passkey:\n    digits: 2\n" + extra);
}

struct Result {
  double loss = 0;
  std::vector<double> grads;
};

// Loss (mean over scored tokens) and flat gradients of the whole batch, on `world` simulated ranks.
Result loss_and_grads(const Config& cfg, const std::vector<double>* params = nullptr) {
  Result r;
  std::mutex mu;
  const int world = static_cast<int>(cfg.parallel.world());
  dist::run_simulated(world, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, mesh_shape(cfg));
    const dist::Layout layout = config_layout(cfg);
    Model m(cfg, Device::cpu(), mesh, layout);
    m.init(7);
    if (params) {
      m.flat_params().copy_from(Tensor::from_vector({m.num_params()}, *params, DType::f32));
      m.sync_compute_weights();
    }
    auto data = make_dataset(cfg.data, cfg.model.vocab_size);
    Shard sh;
    sh.dp = cfg.parallel.dp;
    sh.dp_rank = mesh.coords().dp;
    sh.positions = layout.positions(mesh.coords().sp);
    const Batch b = make_batch(*data, cfg.data, Split::train, 0, sh);
    int64_t scored = b.scored;
    comm.all_reduce(std::span<int64_t>(&scored, 1), dist::ReduceOp::sum);
    const StepStats st = m.forward_backward(b, 1.0 / static_cast<double>(scored));
    double loss = st.loss_sum;
    comm.all_reduce(std::span<double>(&loss, 1), dist::ReduceOp::sum);
    comm.all_reduce(m.flat_grads(), dist::ReduceOp::sum);
    if (comm.rank() == 0) {
      std::lock_guard<std::mutex> lock(mu);
      r.loss = loss / static_cast<double>(scored);
      r.grads = m.flat_grads().to_vector();
    }
  });
  return r;
}

// ||b - a|| / ||a|| over the gradients (a the reference; nonzero).
double grad_rel_error(const Result& a, const Result& b) {
  EXPECT_EQ(a.grads.size(), b.grads.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    num += (a.grads[i] - b.grads[i]) * (a.grads[i] - b.grads[i]);
    den += a.grads[i] * a.grads[i];
  }
  EXPECT_GT(den, 0);
  return std::sqrt(num / den);
}

std::vector<double> init_params(const Config& cfg) {
  std::vector<double> p;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    dist::Layout layout(dist::LayoutKind::zigzag, cfg.data.seq_len, 1, 1);
    Model m(cfg, Device::cpu(), mesh, layout);
    m.init(7);
    p = m.flat_params().to_vector();
  });
  return p;
}

void expect_directional_derivatives(const Config& cfg) {
  const std::vector<double> p0 = init_params(cfg);
  const Result base = loss_and_grads(cfg, &p0);
  ASSERT_EQ(base.grads.size(), p0.size());
  for (uint64_t dir = 0; dir < 3; ++dir) {
    Tensor d = Tensor::empty({static_cast<int64_t>(p0.size())}, DType::f64);
    rng_normal(d, 99 + dir, 0);
    const std::vector<double> dv = d.to_vector();
    double gd = 0;
    for (size_t i = 0; i < p0.size(); ++i) gd += base.grads[i] * dv[i];
    const double eps = 2e-3;
    std::vector<double> pp(p0), pm(p0);
    for (size_t i = 0; i < p0.size(); ++i) pp[i] += eps * dv[i], pm[i] -= eps * dv[i];
    const double num = (loss_and_grads(cfg, &pp).loss - loss_and_grads(cfg, &pm).loss) / (2 * eps);
    EXPECT_NEAR(num, gd, 2e-2 * std::max(1.0, std::abs(gd))) << "direction " << dir;
  }
}

TEST(ModelGrad, FiniteDifferencesRope) { expect_directional_derivatives(tiny()); }

TEST(ModelGrad, FiniteDifferencesAlibiUntied) {
  expect_directional_derivatives(tiny("  position: alibi\n  tied_embeddings: false\n"));
}

// QK-norm, a sliding window and a head dim other than dim / n_heads (4 heads of 6 in dim 16).
TEST(ModelGrad, FiniteDifferencesQkNormWindowHeadDim) {
  expect_directional_derivatives(tiny("  head_dim: 6\n", "mixer:\n  softmax:\n    qk_norm: true\n    window: 7\n"));
}

TEST(ModelGrad, CheckpointingGivesIdenticalGradients) {
  const std::string ring = "parallel:\n  sp: 2\n";
  for (const std::string& extra : {std::string(), ring})
    for (const char* which : {"all", "[1]"}) {
      const Config plain = tiny("", extra), ckpt = tiny(std::string("  activation_checkpointing: ") + which + "\n", extra);
      const Result a = loss_and_grads(plain), b = loss_and_grads(ckpt);
      EXPECT_EQ(a.loss, b.loss) << which << " " << extra;
      ASSERT_EQ(a.grads.size(), b.grads.size());
      for (size_t i = 0; i < a.grads.size(); ++i) ASSERT_EQ(a.grads[i], b.grads[i]) << i << " " << which << " " << extra;
    }
}

// Recomputed layers run their MLP in chunks (here 5 tokens, several per sequence): the
// gradients equal the unchunked ones up to the order of the weight-gradient sums.
TEST(ModelGrad, ChunkedMlpMatchesWholeSequence) {
  const Result a = loss_and_grads(tiny()), b = loss_and_grads(tiny("  activation_checkpointing: all\n  mlp_chunk: 5\n"));
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_LE(grad_rel_error(a, b), 1e-5);
}

// Attention in groups of heads (one after another) computes the same thing, for every kind
// and with ALiBi slopes split over the groups.
TEST(ModelGrad, HeadGroupsMatchAllHeads) {
  const char* layouts[] = {"", "parallel:\n  sp: 2\n", "parallel:\n  sp: 2\n  ulysses: 2\n"};
  for (const char* l : layouts)
    for (const char* pos : {"", "  position: alibi\n"}) {
      const Result a = loss_and_grads(tiny(pos, l));
      const Result b = loss_and_grads(tiny(pos, std::string(l) + "mixer:\n  softmax:\n    head_groups: 2\n"));
      EXPECT_NEAR(a.loss, b.loss, 1e-6 * a.loss) << l << pos;
      EXPECT_LE(grad_rel_error(a, b), 1e-6) << l << pos;
    }
}

TEST(ModelGrad, RingAndUlyssesMatchOneRank) {
  const Result one = loss_and_grads(tiny());
  const char* layouts[] = {
      "parallel:\n  sp: 4\n",
      "parallel:\n  sp: 4\n  layout: contiguous\n",
      "mixer:\n  softmax:\n    sp: all_gather\nparallel:\n  sp: 4\n",
      "parallel:\n  sp: 2\n  ulysses: 2\n",
      "mixer:\n  softmax:\n    sp: hybrid\nparallel:\n  dp: 2\n  sp: 2\n  ulysses: 2\n",
      "mixer:\n  softmax:\n    sp: all_gather\nparallel:\n  sp: 4\n  ulysses: 2\n",
  };
  for (const char* l : layouts) {
    const Result r = loss_and_grads(tiny("", l));
    EXPECT_NEAR(r.loss, one.loss, 1e-5 * one.loss) << l;
    EXPECT_LT(grad_rel_error(one, r), 1e-4) << l;
  }
}

// Hybrid stacks (softmax attention with Mamba or Mamba-2) on one zigzag layout: the ring and
// the Mamba layers' conv halos and state scans share the shards with no token permutation, and
// the model's gradients match finite differences and one rank.
TEST(ModelGrad, HybridSoftmaxMambaMatchesOneRank) {
  const std::string mamba = "mixer:\n  mamba:\n    d_state: 4\n  mamba2:\n    head_dim: 8\n    d_state: 4\n";
  for (const char* hybrid : {"  mixers: [softmax, mamba]\n", "  mixers: [mamba2, softmax]\n"}) {
    expect_directional_derivatives(tiny(hybrid, mamba));
    const Result one = loss_and_grads(tiny(hybrid, mamba));
    for (const char* l : {"parallel:\n  sp: 4\n", "parallel:\n  sp: 2\n  layout: contiguous\n"}) {
      const Result r = loss_and_grads(tiny(hybrid, mamba + l));
      EXPECT_NEAR(r.loss, one.loss, 1e-5 * one.loss) << hybrid << l;
      EXPECT_LT(grad_rel_error(one, r), 1e-4) << hybrid << l;
    }
  }
}

// Accuracy counts the scored (answer) tokens only, by argmax. With the final norm's weight
// zeroed every logit is 0: each scored token costs ln(V) and the argmax is token 0 (first of
// the ties), so the correct predictions are exactly the scored targets equal to 0.
TEST(ModelMetric, AccuracyOnScoredTokensOnly) {
  Config cfg = tiny();
  cfg.data.batch_size = 16;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    dist::Layout layout(dist::LayoutKind::zigzag, cfg.data.seq_len, 1, 1);
    Model m(cfg, Device::cpu(), mesh, layout);
    m.init(7);
    for (auto& p : m.params())
      if (p.name == "final_norm") p.master.zero();
    auto data = make_dataset(cfg.data, cfg.model.vocab_size);
    Shard sh;
    sh.positions = layout.positions(0);
    const Batch b = make_batch(*data, cfg.data, Split::eval, 0, sh);
    const StepStats st = m.evaluate(b);
    int64_t zeros = 0, scored = 0;
    for (int64_t i = 0; i < b.targets.numel(); ++i) {
      const int32_t t = b.targets.data<int32_t>()[i];
      scored += t >= 0;
      zeros += t == 0;
    }
    EXPECT_EQ(st.scored, static_cast<double>(scored));
    EXPECT_EQ(scored, 16 * 2);  // 2 passkey digits per sequence
    EXPECT_GT(zeros, 0);
    EXPECT_EQ(st.correct, static_cast<double>(zeros));
    EXPECT_NEAR(st.loss_sum / st.scored, std::log(24.0), 1e-5);
  });
}

}  // namespace
