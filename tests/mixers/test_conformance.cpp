// The conformance suite every registered mixer kind passes (trainers/mixer_registry.h): each
// kind, with each of its test variants, gets
//   1. its backward checked against central differences in f64 (inputs and parameters);
//   2. sequence parallelism on 1, 2, 3, 4 and 8 simulated ranks, zigzag and contiguous shards,
//      with the Ulysses degrees the kind allows, equal to one rank;
//   3. under mpirun -np 2 / -np 4, the same run bitwise equal to SimComm threads;
//   4. recompute (Pass::checkpoint then Pass::recompute) bitwise equal to a plain forward;
//   5. with packed documents (the "_packed" case, also run through 1-4), every document equal
//      to that document run alone as a sequence of its own (y, dx; parameter gradients summed).
// The GPU half (bf16 against this CPU reference) is test_conformance_gpu.cpp.
#include <functional>
#include <mutex>
#include <set>

#include "common/check.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"

using namespace lctx;
using namespace lctx::test;

namespace {

class Conformance : public ::testing::TestWithParam<KindCase> {};

double dot(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

// fn on n SimComm threads; rank 0's result.
Out on_sim_ranks(int n, const std::function<Out(dist::Comm&)>& fn) {
  Out out;
  std::mutex mu;
  dist::run_simulated(
      n,
      [&](dist::Comm& comm) {
        Out o = fn(comm);
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() == 0) out = o;
      },
      test_comm_options());
  return out;
}

Tensor initial_params(const train::Config& cfg) {
  Tensor p;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, cfg.data.seq_len, 1, 1);
    p = build(cfg, mesh, layout, Device::cpu(), DType::f64, DType::f64)->table.flat_params().clone();
  });
  return p;
}

TEST_P(Conformance, BackwardMatchesFiniteDifferences) {
  const KindCase& c = GetParam();
  const MixerShape s;
  const train::Config cfg = case_config(c, s, 1, 1, "zigzag");
  const Tensor x = random_tokens(s, 1), w = random_tokens(s, 2), p0 = initial_params(cfg);
  // loss = <y, w>: its gradient is the backward of dy = w.
  const auto loss_and_grads = [&](const Tensor& xx, const Tensor& pp) {
    SpRun r;
    r.params = pp;
    return on_sim_ranks(1, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, xx, w, r); });
  };
  const Out base = loss_and_grads(x, p0);
  for (uint64_t dir = 0; dir < 3; ++dir) {
    Tensor dxd = Tensor::empty(x.shape(), DType::f64), dpd = Tensor::empty(p0.shape(), DType::f64);
    rng_normal(dxd, 50 + dir, 0);
    rng_normal(dpd, 60 + dir, 0);
    const double analytic = dot(base.dx, dxd) + dot(base.grads, dpd);
    const double eps = 1e-5;
    const auto shifted = [&](double sgn) {
      Tensor xs = x.clone(), ps = p0.clone();
      const auto vx = dxd.to_vector(), vp = dpd.to_vector();
      auto ax = xs.to_vector(), ap = ps.to_vector();
      for (size_t i = 0; i < ax.size(); ++i) ax[i] += sgn * eps * vx[i];
      for (size_t i = 0; i < ap.size(); ++i) ap[i] += sgn * eps * vp[i];
      return dot(loss_and_grads(Tensor::from_vector(x.shape(), ax, DType::f64),
                                Tensor::from_vector(p0.shape(), ap, DType::f64))
                     .y,
                 w);
    };
    const double numeric = (shifted(1) - shifted(-1)) / (2 * eps);
    EXPECT_NEAR(numeric, analytic, 1e-6 * std::max(1.0, std::abs(analytic))) << c.name << " direction " << dir;
  }
}

// Every (ranks, Ulysses degree, layout) the kind accepts equals one rank; at least the plain
// ring-of-n cases must be accepted.
TEST_P(Conformance, SequenceParallelEqualsOneRank) {
  LCTX_SIM_ONLY();
  const KindCase& c = GetParam();
  const MixerShape s;
  const Tensor x = random_tokens(s, 3), dy = random_tokens(s, 4);
  const train::Config one_cfg = case_config(c, s, 1, 1, "zigzag");
  const Out one = on_sim_ranks(1, [&](dist::Comm& comm) { return run_sequence_parallel(one_cfg, comm, x, dy); });
  int runs = 0;
  for (int n : {2, 3, 4, 8})
    for (int u : std::set<int>{1, 2, n})
      for (const char* layout : {"zigzag", "contiguous"}) {
        if (n % u != 0) continue;
        train::Config cfg;
        try {
          cfg = case_config(c, s, n, u, layout);
        } catch (const Error&) {
          continue;  // a combination this kind does not allow (e.g. heads not divisible by u)
        }
        const Out sp = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, x, dy); });
        const std::string what = c.name + " n=" + std::to_string(n) + " u=" + std::to_string(u) + " " + layout;
        EXPECT_LE(rel_error(sp.y, one.y), 1e-12) << what;
        EXPECT_LE(rel_error(sp.dx, one.dx), 1e-12) << what;
        EXPECT_LE(rel_error(sp.grads, one.grads), 1e-12) << what;
        ++runs;
      }
  EXPECT_GE(runs, 8) << c.name << ": too few sequence-parallel layouts accepted";
}

// Under mpirun with 2 or 4 processes: the MPI run equals the same run on SimComm threads, bit
// for bit, on every rank (zigzag and contiguous; Ulysses 2 where allowed).
TEST_P(Conformance, MpiEqualsSimComm) {
  dist::Comm* world = mpi_world();
  if (!world) GTEST_SKIP() << "runs under mpirun -np 2 / -np 4";
  const KindCase& c = GetParam();
  const MixerShape s;
  const int n = world->size(), r = world->rank();
  const Tensor x = random_tokens(s, 5), dy = random_tokens(s, 6);
  for (int u : {1, 2})
    for (const char* layout : {"zigzag", "contiguous"}) {
      train::Config cfg;
      try {
        cfg = case_config(c, s, n, u, layout);
      } catch (const Error&) {
        continue;
      }
      Out mine, sim;
      const Out full = run_sequence_parallel(cfg, *world, x, dy, {}, &mine);
      std::mutex mu;
      dist::run_simulated(n, [&](dist::Comm& comm) {
        Out local;
        run_sequence_parallel(cfg, comm, x, dy, {}, &local);
        std::lock_guard<std::mutex> lock(mu);
        if (comm.rank() == r) sim = local;
      });
      const std::string what = c.name + " u=" + std::to_string(u) + " " + layout + " rank " + std::to_string(r);
      EXPECT_EQ(mine.y.to_vector(), sim.y.to_vector()) << what;
      EXPECT_EQ(mine.dx.to_vector(), sim.dx.to_vector()) << what;
      EXPECT_EQ(mine.grads.to_vector(), sim.grads.to_vector()) << what;
      (void)full;
    }
}

TEST_P(Conformance, RecomputeIsBitwise) {
  LCTX_SIM_ONLY();
  const KindCase& c = GetParam();
  const MixerShape s;
  const Tensor x = random_tokens(s, 7), dy = random_tokens(s, 8);
  for (int n : {1, 2}) {
    const train::Config cfg = case_config(c, s, n, 1, "zigzag");
    SpRun plain, rc;
    rc.recompute = Recompute::yes;
    const Out a = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, x, dy, plain); });
    const Out b = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, x, dy, rc); });
    EXPECT_EQ(a.y.to_vector(), b.y.to_vector()) << c.name << " n=" << n;
    EXPECT_EQ(a.dx.to_vector(), b.dx.to_vector()) << c.name << " n=" << n;
    EXPECT_EQ(a.grads.to_vector(), b.grads.to_vector()) << c.name << " n=" << n;
  }
}

// FLOPs are positive and grow with the sequence for every kind (MFU per kind); over a sequence
// every parameter is used at least once (6 FLOPs each, forward + backward). Not every token
// need use every parameter: Linformer's E and F have one column per position.
TEST_P(Conformance, ReportsFlops) {
  const KindCase& c = GetParam();
  const train::Config cfg = case_config(c, MixerShape{}, 1, 1, "zigzag");
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, cfg.data.seq_len, 1, 1);
    auto b = build(cfg, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    const double params = static_cast<double>(b->table.numel());
    const int64_t S = cfg.data.seq_len;
    EXPECT_GE(b->mixer->flops_per_token(S) * static_cast<double>(S), 6 * params) << c.name;
    EXPECT_GE(b->mixer->flops_per_token(4096), b->mixer->flops_per_token(1)) << c.name;
  });
}

INSTANTIATE_TEST_SUITE_P(Kinds, Conformance, ::testing::ValuesIn(kind_cases()),
                         [](const auto& info) { return info.param.name; });

// A packed sequence computes each of its documents as if it were alone: on one rank and on 4
// ring ranks, y and dx of every document equal those of a run on that document's tokens only
// (a sequence of kDocumentLen tokens), and the parameter gradients equal their sum.
class ConformanceDocuments : public ::testing::TestWithParam<KindCase> {};

TEST_P(ConformanceDocuments, EachDocumentAsIfAlone) {
  LCTX_SIM_ONLY();
  const KindCase& c = GetParam();
  const MixerShape s;
  const Tensor x = random_tokens(s, 9), dy = random_tokens(s, 10);
  KindCase alone = c;  // the same kind and options on one document, without packing
  alone.overrides.clear();
  for (const std::string& o : c.overrides)
    if (o.rfind("data.", 0) != 0) alone.overrides.push_back(o);
  MixerShape one_doc = s;
  one_doc.seq = kDocumentLen;
  const train::Config alone_cfg = case_config(alone, one_doc, 1, 1, "zigzag");
  std::vector<Out> docs;
  for (int64_t d0 = 0; d0 < s.seq; d0 += kDocumentLen) {
    const Tensor xd = x.slice(1, d0, d0 + kDocumentLen).contiguous();
    const Tensor dyd = dy.slice(1, d0, d0 + kDocumentLen).contiguous();
    docs.push_back(on_sim_ranks(1, [&](dist::Comm& comm) { return run_sequence_parallel(alone_cfg, comm, xd, dyd); }));
  }
  for (int n : {1, 4}) {
    const train::Config cfg = case_config(c, s, n, 1, "zigzag");
    const Out packed = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, x, dy); });
    std::vector<double> grads(static_cast<size_t>(packed.grads.numel()), 0.0);
    for (size_t d = 0; d < docs.size(); ++d) {
      const int64_t d0 = static_cast<int64_t>(d) * kDocumentLen;
      const std::string what = c.name + " n=" + std::to_string(n) + " document " + std::to_string(d);
      EXPECT_LE(rel_error(packed.y.slice(1, d0, d0 + kDocumentLen).contiguous(), docs[d].y), 1e-12) << what;
      EXPECT_LE(rel_error(packed.dx.slice(1, d0, d0 + kDocumentLen).contiguous(), docs[d].dx), 1e-12) << what;
      const std::vector<double> gd = docs[d].grads.to_vector();
      for (size_t i = 0; i < grads.size(); ++i) grads[i] += gd[i];
    }
    EXPECT_LE(rel_error(packed.grads, Tensor::from_vector(packed.grads.shape(), grads, DType::f64)), 1e-12)
        << c.name << " n=" << n;
  }
}

std::vector<KindCase> packed_cases() {
  std::vector<KindCase> v;
  for (const KindCase& c : kind_cases())
    if (c.name.ends_with("_packed")) v.push_back(c);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kinds, ConformanceDocuments, ::testing::ValuesIn(packed_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
