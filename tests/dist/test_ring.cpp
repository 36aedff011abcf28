// Sequence-parallel attention on CPU ranks (SimComm threads, or MpiComm under mpirun) equals
// single-device attn::flash forward and backward: ring, zigzag ring, all-gather, Ulysses and
// hybrid, over causal/full masks, GQA, sliding windows, ALiBi and document ids, for 1, 2, 3,
// 4 and 8 ranks. Tolerances (relative L2 error vs the single-device result): f64 1e-11 and f32
// 2e-6 forward / 1e-5 backward, the same for every rank count (the error does not grow).
// Under mpirun the MpiComm results must be bitwise identical to SimComm's of the same size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "attn/flash.h"
#include "common/check.h"
#include "common/gradcheck.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ulysses.h"
#include "dist_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

enum class Algo { ring, all_gather, ulysses };

// Document ids of a case: none; packed (short documents, with their host Documents so the
// ring skips blocks); ids_only (the same ids without host Documents: nothing skipped by the
// ring); single (one document over every rank).
enum class Docs { none, packed, ids_only, single };

struct Case {
  std::string name;
  int ring = 1, ulysses = 1;
  LayoutKind kind = LayoutKind::zigzag;
  Algo algo = Algo::ring;
  bool causal = true;
  int Hq = 4, Hkv = 2;
  int64_t wl = -1, wr = -1;
  bool alibi = false;
  Docs docs = Docs::none;
  DType dtype = DType::f64;
  int64_t S = 48, B = 2;
  int D = 8;
  int world() const { return ring * ulysses; }
};

std::string case_name(const testing::TestParamInfo<Case>& i) { return i.param.name; }

struct Inputs {
  Tensor q, k, v, dout, docs;  // full sequence
  attn::FlashOptions opts;     // global options (docs set per rank)
};

// Packed documents of lengths 1..16 (one-token documents included), a different cycle per
// row, or one document over the whole sequence.
std::shared_ptr<const attn::Documents> make_documents(const Case& c) {
  static constexpr int64_t kLen[8] = {1, 7, 1, 2, 16, 3, 5, 9};
  std::vector<std::vector<int64_t>> starts(c.B);
  for (int64_t b = 0; b < c.B; ++b) {
    starts[b].push_back(0);
    if (c.docs == Docs::single) continue;
    for (int64_t i = b, at = kLen[b % 8]; at < c.S; at += kLen[++i % 8]) starts[b].push_back(at);
  }
  return std::make_shared<const attn::Documents>(c.S, std::move(starts));
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  in.q = Tensor::empty({c.B, c.S, c.Hq, c.D}, c.dtype);
  in.k = Tensor::empty({c.B, c.S, c.Hkv, c.D}, c.dtype);
  in.v = Tensor::empty({c.B, c.S, c.Hkv, c.D}, c.dtype);
  in.dout = Tensor::empty({c.B, c.S, c.Hq, c.D}, c.dtype);
  rng_normal(in.q, seed, 0);
  rng_normal(in.k, seed + 1, 0);
  rng_normal(in.v, seed + 2, 0);
  rng_normal(in.dout, seed + 3, 0);
  in.opts.mask = c.causal ? attn::Mask::causal : attn::Mask::none;
  in.opts.window_left = c.wl;
  in.opts.window_right = c.wr;
  if (c.alibi) {
    std::vector<double> slopes;
    for (int h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(0.5, h + 1));
    in.opts.alibi_slopes = Tensor::from_vector({c.Hq}, slopes, DType::f32);
  }
  if (c.docs != Docs::none) {
    const auto docs = make_documents(c);
    const std::vector<int32_t> ids = docs->ids();
    in.docs = Tensor::from_vector({c.B, c.S}, std::vector<double>(ids.begin(), ids.end()), DType::i32);
    if (c.docs != Docs::ids_only) in.opts.documents = docs;
  }
  return in;
}

struct Results {
  Tensor o, lse, dq, dk, dv;
};

// The single-device reference.
Results reference(const Inputs& in) {
  attn::FlashOptions o = in.opts;
  o.q_doc_ids = o.k_doc_ids = in.docs;
  auto f = attn::flash_forward(in.q, in.k, in.v, o);
  auto g = attn::flash_backward(in.q, in.k, in.v, f.o, f.lse, in.dout, o);
  return {f.o, f.lse, g.dq, g.dk, g.dv};
}

// This rank's local results (layout order).
Results run_local(const Case& c, const Inputs& in, Comm& world) {
  Mesh mesh(world, {1, c.ulysses, c.ring});
  const Layout layout(c.kind, c.S, c.ring, c.ulysses);
  const int r = mesh.sp().rank();
  Tensor q = layout.shard(in.q, r), k = layout.shard(in.k, r), v = layout.shard(in.v, r);
  Tensor dout = layout.shard(in.dout, r);
  attn::FlashOptions o = in.opts;
  if (in.docs.defined()) o.q_doc_ids = o.k_doc_ids = layout.shard(in.docs, r);
  const RingMode mode = c.algo == Algo::all_gather ? RingMode::all_gather : RingMode::ring;
  if (c.algo == Algo::ulysses) {
    auto f = ulysses_attention_forward(mesh.ulysses(), mesh.ring(), layout, q, k, v, o, mode);
    auto g = ulysses_attention_backward(mesh.ulysses(), mesh.ring(), layout, q, k, v, f.o, f.lse, dout, o, mode);
    return {f.o, f.lse, g.dq, g.dk, g.dv};
  }
  auto f = ring_attention_forward(mesh.ring(), layout, q, k, v, o, mode);
  auto g = ring_attention_backward(mesh.ring(), layout, q, k, v, f.o, f.lse, dout, o, mode);
  return {f.o, f.lse, g.dq, g.dk, g.dv};
}

Results unshard(const Case& c, Comm& world, const Results& l) {
  Mesh mesh(world, {1, c.ulysses, c.ring});
  const Layout layout(c.kind, c.S, c.ring, c.ulysses);
  Comm& sp = mesh.sp();
  return {layout.unshard(sp, l.o), layout.unshard(sp, l.lse, 2), layout.unshard(sp, l.dq), layout.unshard(sp, l.dk),
          layout.unshard(sp, l.dv)};
}

void expect_bitwise(const Tensor& a, const Tensor& b, const char* what) {
  EXPECT_EQ(a.to_vector(), b.to_vector()) << what << " differs between MpiComm and SimComm";
}

class SeqParallel : public testing::TestWithParam<Case> {};

TEST_P(SeqParallel, MatchesSingleDevice) {
  const Case c = GetParam();
  const Inputs in = make_inputs(c, 1234);
  const Results ref = reference(in);
  const double tf = c.dtype == DType::f64 ? 1e-11 : 2e-6, tb = c.dtype == DType::f64 ? 1e-11 : 1e-5;
  std::mutex mu;
  Results got;
  std::vector<Results> sim_local(c.world());
  Results mpi_local;
  const bool ran = test::run_ranks(c.world(), [&](Comm& world) {
    Results local = run_local(c, in, world);
    Results full = unshard(c, world, local);
    std::lock_guard lk(mu);
    if (world.rank() == 0 || test::mpi_world()) got = full;  // one process per rank under mpirun
    mpi_local = local;
  });
  if (!ran) GTEST_SKIP() << "needs " << c.world() << " MPI processes";
  LCTX_EXPECT_CLOSE(got.o, ref.o, tf);
  LCTX_EXPECT_CLOSE(got.lse, ref.lse, tf);
  LCTX_EXPECT_CLOSE(got.dq, ref.dq, tb);
  LCTX_EXPECT_CLOSE(got.dk, ref.dk, tb);
  LCTX_EXPECT_CLOSE(got.dv, ref.dv, tb);
  if (Comm* w = test::mpi_world()) {  // same seed, SimComm of the same size: bitwise equal
    run_simulated(c.world(), [&](Comm& sim) {
      Results l = run_local(c, in, sim);
      std::lock_guard lk(mu);
      sim_local[sim.rank()] = l;
    });
    const Results& s = sim_local[w->rank()];
    expect_bitwise(mpi_local.o, s.o, "o");
    expect_bitwise(mpi_local.lse, s.lse, "lse");
    expect_bitwise(mpi_local.dq, s.dq, "dq");
    expect_bitwise(mpi_local.dk, s.dk, "dk");
    expect_bitwise(mpi_local.dv, s.dv, "dv");
  }
}

std::vector<Case> cases() {
  std::vector<Case> v;
  auto add = [&](Case c, const std::string& tag) {
    c.name = tag + "_u" + std::to_string(c.ulysses) + "_r" + std::to_string(c.ring);
    v.push_back(c);
  };
  for (int n : {1, 2, 3, 4, 8}) {
    Case c;
    c.ring = n;
    c.kind = LayoutKind::contiguous;
    add(c, "ring_contig_causal_gqa");
    c.kind = LayoutKind::zigzag;
    c.docs = Docs::packed;
    add(c, "zigzag_causal_docs");
    c.docs = Docs::ids_only;
    add(c, "zigzag_causal_doc_ids");
    c.docs = Docs::single;
    c.B = 1;
    add(c, "zigzag_causal_one_doc");
    c.B = 2;
    c.kind = LayoutKind::contiguous;
    c.docs = Docs::packed;
    add(c, "contig_causal_docs");
    c.kind = LayoutKind::zigzag;
    c.docs = Docs::none;
    c.causal = false;
    c.alibi = true;
    add(c, "zigzag_full_alibi");
    c.alibi = false;
    c.causal = true;
    c.kind = LayoutKind::contiguous;
    c.wl = 5;
    add(c, "contig_causal_window");
    c.kind = LayoutKind::zigzag;
    // Halo exchange where the window fits a segment (48 / 2n positions), the ring schedule
    // where it does not (8 ranks: segments of 3).
    add(c, "zigzag_causal_window");
    c.wl = 2;
    c.alibi = true;
    c.Hkv = 1;
    add(c, "zigzag_causal_window_alibi_mqa");
    c.alibi = false;
    c.Hkv = 2;
    c.causal = false;
    c.wl = 4;
    c.wr = 3;
    c.alibi = true;
    add(c, "zigzag_bidir_window_alibi");
    Case a;
    a.ring = n;
    a.algo = Algo::all_gather;
    a.docs = Docs::packed;
    add(a, "allgather_zigzag_causal_docs");
    Case f;
    f.ring = n;
    f.dtype = DType::f32;
    f.Hkv = 1;
    add(f, "f32_zigzag_causal_mqa");
    f.wl = 3;
    add(f, "f32_zigzag_causal_window_mqa");
  }
  for (auto [u, r] : {std::pair{2, 1}, {4, 1}, {2, 2}, {2, 4}, {4, 2}}) {
    Case c;
    c.algo = Algo::ulysses;
    c.ulysses = u;
    c.ring = r;
    c.docs = Docs::packed;
    add(c, "ulysses_zigzag_causal_docs_gqa");  // Hkv = 2: replicated when u = 4
    c.kind = LayoutKind::contiguous;
    c.docs = Docs::none;
    c.alibi = true;
    c.wl = 6;
    c.Hkv = 4;
    add(c, "ulysses_contig_window_alibi");
  }
  Case h;
  h.algo = Algo::ulysses;
  h.ulysses = 2;
  h.ring = 2;
  h.dtype = DType::f32;
  add(h, "f32_hybrid");
  return v;
}

INSTANTIATE_TEST_SUITE_P(Dist, SeqParallel, testing::ValuesIn(cases()), case_name);

TEST(SeqParallel, UlyssesRejectsIndivisibleHeads) {
  Case c;
  c.algo = Algo::ulysses;
  c.ulysses = 3;
  c.Hq = 4;
  c.S = 48;
  const Inputs in = make_inputs(c, 1);
  try {
    const bool ran = test::run_ranks(3, [&](Comm& w) { run_local(c, in, w); });
    if (!ran) GTEST_SKIP();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Ulysses degree 3 must divide the number of query heads 4"), std::string::npos)
        << e.what();
  }
}

// The error of f32 results does not grow with the number of ranks.
TEST(SeqParallel, F32ErrorDoesNotGrowWithRanks) {
  LCTX_SIM_ONLY();
  Case c;
  c.dtype = DType::f32;
  c.S = 96;
  c.docs = Docs::packed;
  const Inputs in = make_inputs(c, 99);
  Inputs in64 = in;
  for (Tensor* t : {&in64.q, &in64.k, &in64.v, &in64.dout}) *t = t->to(DType::f64);
  const Results ref = reference(in64);
  std::vector<double> err;
  for (int n : {1, 2, 4, 8}) {
    c.ring = n;
    Results got;
    std::mutex mu;
    run_simulated(n, [&](Comm& w) {
      Results full = unshard(c, w, run_local(c, in, w));
      std::lock_guard lk(mu);
      if (w.rank() == 0) got = full;
    });
    err.push_back(std::max({test::rel_error(got.o, ref.o), test::rel_error(got.dq, ref.dq),
                            test::rel_error(got.dk, ref.dk), test::rel_error(got.dv, ref.dv)}));
  }
  for (size_t i = 1; i < err.size(); ++i)
    EXPECT_LE(err[i], 2 * err[0] + 1e-6) << "ranks " << (1 << i) << ": " << err[i] << " vs 1 rank " << err[0];
}

// Window 0: every query sees only itself, so on every non-local step all rows of every
// partial result are fully masked (lse = -inf): they must weigh 0, never NaN.
TEST(SeqParallel, RowsMaskedInEveryRemoteStepStayExact) {
  LCTX_SIM_ONLY();
  Case c;
  c.ring = 4;
  c.causal = false;
  c.S = 16;
  c.B = 1;
  Inputs in = make_inputs(c, 5);
  in.opts.window_left = 0;
  in.opts.window_right = 0;
  in.opts.mask = attn::Mask::causal;
  const Results ref = reference(in);
  Results got;
  std::mutex mu;
  run_simulated(4, [&](Comm& w) {
    Results full = unshard(c, w, run_local(c, in, w));
    std::lock_guard lk(mu);
    if (w.rank() == 0) got = full;
  });
  LCTX_EXPECT_CLOSE(got.o, ref.o, 1e-12);
  LCTX_EXPECT_CLOSE(got.dk, ref.dk, 1e-12);
}

// A sliding window is served by the rows it reaches: with the same tokens per rank, the bytes a
// rank sends (Comm::traffic, forward and backward) are the same on a ring of 3, 4 or 8 ranks, on
// both layouts, far below causal attention's R - 1 hops, and exactly the halo rows.
TEST(SeqParallel, WindowBytesDoNotGrowWithTheRing) {
  LCTX_SIM_ONLY();
  constexpr int64_t kPerRank = 16;
  const auto most_sent = [&](LayoutKind kind, int R, int64_t window_left) {
    Case c;
    c.ring = R;
    c.kind = kind;
    c.S = kPerRank * R;
    c.B = 1;
    c.wl = window_left;
    const Inputs in = make_inputs(c, 11);
    std::mutex mu;
    int64_t most = 0;
    run_simulated(R, [&](Comm& world) {
      Mesh mesh(world, {1, 1, R});
      const Layout layout(kind, c.S, R, 1);
      const int r = mesh.sp().rank();
      const Tensor q = layout.shard(in.q, r), k = layout.shard(in.k, r), v = layout.shard(in.v, r);
      const auto f = ring_attention_forward(mesh.ring(), layout, q, k, v, in.opts, RingMode::ring);
      ring_attention_backward(mesh.ring(), layout, q, k, v, f.o, f.lse, layout.shard(in.dout, r), in.opts,
                              RingMode::ring);
      std::lock_guard lk(mu);
      most = std::max(most, mesh.ring().traffic().sent_bytes);
    });
    return most;
  };
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag}) {
    const int64_t w3 = most_sent(kind, 3, 3), w4 = most_sent(kind, 4, 3), w8 = most_sent(kind, 8, 3);
    const int64_t causal8 = most_sent(kind, 8, -1);
    std::printf("[ bytes ] %s: window 4 on 3/4/8 ranks %lld/%lld/%lld, causal on 8 ranks %lld\n",
                kind == LayoutKind::zigzag ? "zigzag" : "contiguous", static_cast<long long>(w3),
                static_cast<long long>(w4), static_cast<long long>(w8), static_cast<long long>(causal8));
    EXPECT_GT(w3, 0);
    EXPECT_EQ(w4, w3) << "window 4 on 4 ranks";
    EXPECT_EQ(w8, w3) << "window 4 on 8 ranks";
    EXPECT_LT(2 * w8, causal8) << "window 4 against causal attention on 8 ranks";
    // Halo exchange: per segment fed by another rank, its 3 K rows and 3 V rows forward, again
    // in the backward, and their gradients back (f64 rows of Hkv = 2 heads x D = 8: 128 bytes).
    const int64_t segments = kind == LayoutKind::zigzag ? 2 : 1;
    EXPECT_EQ(w3, segments * 6 * 3 * 128) << "window 4: the halo rows and no more";
  }
}

// Finite differences through the whole zigzag ring (2 ranks): gradients of
// loss = sum(o * w) with respect to the global q, k and v.
TEST(SeqParallel, RingGradcheck) {
  LCTX_SIM_ONLY();
  Case c;
  c.ring = 2;
  c.S = 8;
  c.B = 1;
  c.Hq = 2;
  c.Hkv = 1;
  c.D = 4;
  c.alibi = true;
  Inputs in = make_inputs(c, 7);
  Tensor w = in.dout;  // loss weights
  auto forward = [&](bool with_grads) {
    Results got;
    std::mutex mu;
    Inputs cur = in;
    cur.dout = w;
    run_simulated(2, [&](Comm& comm) {
      Results full = unshard(c, comm, run_local(c, cur, comm));
      std::lock_guard lk(mu);
      if (comm.rank() == 0) got = full;
    });
    (void)with_grads;
    return got;
  };
  const Results g = forward(true);
  auto loss = [&] {
    const auto o = forward(false).o.to_vector(), wv = w.to_vector();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * wv[i];
    return s;
  };
  test::expect_grad_close(loss, in.q, g.dq, "dq", 1e-6, 1e-7);
  test::expect_grad_close(loss, in.k, g.dk, "dk", 1e-6, 1e-7);
  test::expect_grad_close(loss, in.v, g.dv, "dv", 1e-6, 1e-7);
}

}  // namespace
