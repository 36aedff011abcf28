// Every Comm operation against expected values on SimComm (1, 2, 3, 4, 8 threads) and on
// MpiComm (under mpirun -np 2 / 4), and deliberate mismatches that must end with an error
// within a bounded time instead of hanging.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "dist/comm.h"
#include "dist/mpi_comm.h"
#include "dist/sim_comm.h"
#include "dist_test.h"

using namespace lctx;
using namespace lctx::dist;

namespace {

Tensor filled(const std::vector<double>& v, DType dt) { return Tensor::from_vector({(int64_t)v.size()}, v, dt); }

class CommOps : public testing::TestWithParam<int> {};

TEST_P(CommOps, PointToPoint) {
  const int n = GetParam();
  LCTX_RUN_RANKS_OR_SKIP(n, [](Comm& c) {
    const int r = c.rank(), N = c.size(), next = (r + 1) % N, prev = (r + N - 1) % N;
    // Ring sendrecv of tensors, in several dtypes.
    for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64}) {
      Tensor send = filled({double(r), double(r) + 1, 2.0 * r}, dt);
      Tensor recv = Tensor::zeros({3}, dt);
      Request req = c.sendrecv(send, next, recv, prev);
      req.wait();
      EXPECT_FALSE(req.pending());
      EXPECT_EQ(recv.to_vector(), (std::vector<double>{double(prev), double(prev) + 1, 2.0 * prev}))
          << dtype_name(dt);
    }
    // Typed spans, isend/irecv in both directions, several messages in flight (order kept).
    std::vector<int64_t> a{r * 10, r * 10 + 1}, b{r * 10 + 5};
    std::vector<int64_t> ra(2), rb(1);
    Request s1 = c.isend(std::span<const int64_t>(a), next);
    Request s2 = c.isend(std::span<const int64_t>(b), next);
    Request q1 = c.irecv(std::span<int64_t>(ra), prev);
    Request q2 = c.irecv(std::span<int64_t>(rb), prev);
    q2.wait();
    q1.wait();
    s1.wait();
    while (!s2.test()) {
    }
    EXPECT_EQ(ra, (std::vector<int64_t>{prev * 10, prev * 10 + 1}));
    EXPECT_EQ(rb, (std::vector<int64_t>{prev * 10 + 5}));
    // Span sendrecv of doubles.
    std::vector<double> sd{0.5 * r}, rd(1);
    c.sendrecv(std::span<const double>(sd), prev, std::span<double>(rd), next).wait();
    EXPECT_EQ(rd[0], 0.5 * next);
  });
}

TEST_P(CommOps, Collectives) {
  const int n = GetParam();
  LCTX_RUN_RANKS_OR_SKIP(n, [](Comm& c) {
    const int r = c.rank(), N = c.size();
    for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64}) {
      SCOPED_TRACE(std::string(dtype_name(dt)));
      // all_reduce: values (r + 1) * (i + 1) - 3 r, exactly representable.
      std::vector<double> mine(5);
      for (int i = 0; i < 5; ++i) mine[i] = (r + 1) * (i + 1) - 3.0 * r;
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
        Tensor t = filled(mine, dt);
        c.all_reduce(t, op);
        std::vector<double> want(5);
        for (int i = 0; i < 5; ++i) {
          double acc = op == ReduceOp::sum ? 0 : (op == ReduceOp::max ? -1e300 : 1e300);
          for (int q = 0; q < N; ++q) {
            const double v = (q + 1) * (i + 1) - 3.0 * q;
            acc = op == ReduceOp::sum ? acc + v : (op == ReduceOp::max ? std::max(acc, v) : std::min(acc, v));
          }
          want[i] = acc;
        }
        EXPECT_EQ(t.to_vector(), want) << reduce_op_name(op);
      }
      // all_gather: block q of the output is rank q's input.
      Tensor in = filled({double(r), 10.0 + r, 20.0 + r}, dt);
      Tensor out = Tensor::zeros({N, 3}, dt);
      c.all_gather(in, out);
      std::vector<double> want;
      for (int q = 0; q < N; ++q) want.insert(want.end(), {double(q), 10.0 + q, 20.0 + q});
      EXPECT_EQ(out.to_vector(), want);
      // reduce_scatter: rank r gets the sum over ranks of block r.
      std::vector<double> rs(2 * N);
      for (int j = 0; j < 2 * N; ++j) rs[j] = (r + 1) * (j + 1);
      Tensor rout = Tensor::zeros({2}, dt);
      c.reduce_scatter(filled(rs, dt), rout, ReduceOp::sum);
      const double tri = N * (N + 1) / 2.0;
      EXPECT_EQ(rout.to_vector(), (std::vector<double>{tri * (2 * r + 1), tri * (2 * r + 2)}));
      // all_to_all: block j of rank q's input lands in block q of rank j's output.
      std::vector<double> a2a(2 * N);
      for (int j = 0; j < N; ++j) a2a[2 * j] = 16 * r + j, a2a[2 * j + 1] = -(16 * r + j);
      Tensor aout = Tensor::zeros({N, 2}, dt);
      c.all_to_all(filled(a2a, dt), aout);
      std::vector<double> awant;
      for (int q = 0; q < N; ++q) awant.insert(awant.end(), {16.0 * q + r, -(16.0 * q + r)});
      EXPECT_EQ(aout.to_vector(), awant);
      // broadcast from the last rank.
      Tensor b = filled({double(r), 7.0}, dt);
      c.broadcast(b, N - 1);
      EXPECT_EQ(b.to_vector(), (std::vector<double>{double(N - 1), 7.0}));
    }
    // Span collectives.
    std::vector<int32_t> v{r, 1};
    c.all_reduce(std::span<int32_t>(v), ReduceOp::sum);
    EXPECT_EQ(v, (std::vector<int32_t>{N * (N - 1) / 2, N}));
    std::vector<float> g(N);
    const std::vector<float> one{float(r) * 2};
    c.all_gather(std::span<const float>(one), std::span<float>(g));
    for (int q = 0; q < N; ++q) EXPECT_EQ(g[q], 2.0f * q);
    std::vector<double> bc{r == 0 ? 3.5 : 0.0};
    c.broadcast(std::span<double>(bc), 0);
    EXPECT_EQ(bc[0], 3.5);
    c.barrier();
  });
}

TEST_P(CommOps, Split) {
  const int n = GetParam();
  LCTX_RUN_RANKS_OR_SKIP(n, [](Comm& c) {
    const int r = c.rank(), N = c.size();
    // Two colors (even/odd ranks), ranked by descending world rank.
    auto sub = c.split(r % 2, -r);
    std::vector<int> members;
    for (int q = N - 1; q >= 0; --q)
      if (q % 2 == r % 2) members.push_back(q);
    ASSERT_EQ(sub->size(), (int)members.size());
    EXPECT_EQ(members[sub->rank()], r);
    std::vector<int64_t> x{r};
    sub->all_reduce(std::span<int64_t>(x), ReduceOp::sum);
    EXPECT_EQ(x[0], std::accumulate(members.begin(), members.end(), int64_t{0}));
    // Point-to-point inside the sub-communicator.
    std::vector<int32_t> s{r}, got(1);
    const int m = sub->size();
    sub->sendrecv(std::span<const int32_t>(s), (sub->rank() + 1) % m, std::span<int32_t>(got),
                  (sub->rank() + m - 1) % m)
        .wait();
    EXPECT_EQ(got[0], members[(sub->rank() + m - 1) % m]);
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, CommOps, testing::Values(1, 2, 3, 4, 8),
                         [](const testing::TestParamInfo<int>& i) { return "n" + std::to_string(i.param); });

// ---- mismatches: an error within the (short) timeout, never a hang ------------------------

CommOptions short_timeout() {
  CommOptions o;
  o.timeout_s = 0.5;
  o.on_timeout = OnTimeout::throw_error;
  return o;
}

// Runs `fn` on 2 simulated ranks expecting an lctx::Error containing `needle` within 10 s.
void expect_sim_error(const std::function<void(Comm&)>& fn, const std::string& needle) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_simulated(2, fn, short_timeout());
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const CommAborted& e) {
    ADD_FAILURE() << "got only the release of a rank, not the original error: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

TEST(SimMismatch, SendNobodyReceives) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        if (c.rank() == 0) c.isend(Tensor::zeros({4}, DType::f32), 1).wait();
      },
      "no matching operation");
}

TEST(SimMismatch, UnwaitedSendIsReportedAtExit) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        if (c.rank() == 0) Request forgotten = c.isend(Tensor::zeros({4}, DType::f32), 1);
      },
      "unmatched");
}

TEST(SimMismatch, SizeMismatch) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        Tensor buf = Tensor::zeros({c.rank() == 0 ? 4 : 5}, DType::f32);
        if (c.rank() == 0) c.isend(buf, 1).wait();
        else c.irecv(buf, 0).wait();
      },
      "mismatch");
}

TEST(SimMismatch, DtypeMismatch) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        Tensor buf = Tensor::zeros({4}, c.rank() == 0 ? DType::f32 : DType::i32);
        c.sendrecv(buf, 1 - c.rank(), Tensor::zeros({4}, DType::f32), 1 - c.rank()).wait();
      },
      "mismatch");
}

TEST(SimMismatch, DifferentCollectives) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        Tensor t = Tensor::zeros({3}, DType::f32);
        if (c.rank() == 0) c.all_reduce(t, ReduceOp::sum);
        else c.broadcast(t, 0);
      },
      "mismatch");
}

TEST(SimMismatch, CollectiveSizeMismatch) {
  LCTX_SIM_ONLY();
  expect_sim_error([](Comm& c) { c.all_reduce(Tensor::zeros({3 + c.rank()}, DType::f32), ReduceOp::max); },
                   "mismatch");
}

TEST(SimMismatch, CollectiveAgainstPointToPoint) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        if (c.rank() == 0) c.barrier();
        else c.irecv(Tensor::zeros({1}, DType::f32), 0).wait();
      },
      "timed out");
}

TEST(SimMismatch, ThrowingRankReleasesTheOthers) {
  LCTX_SIM_ONLY();
  expect_sim_error(
      [](Comm& c) {
        if (c.rank() == 1) LCTX_FAIL("boom on rank 1");
        c.barrier();  // rank 0 must be released, not wait for the timeout forever
      },
      "boom on rank 1");
}

TEST(SimMismatch, ErrorNamesFileLineAndRank) {
  LCTX_SIM_ONLY();
  try {
    run_simulated(2, [](Comm& c) { c.isend(Tensor::zeros({1}, DType::f32), 5); }, short_timeout());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("dist/comm.cpp:"), std::string::npos) << m;
    EXPECT_NE(m.find("[rank "), std::string::npos) << m;
    EXPECT_NE(m.find("peer rank 5 out of range"), std::string::npos) << m;
  }
}

// Under mpirun -np 2: a receive nobody matches throws (OnTimeout::throw_error) within the
// timeout; afterwards the ranks resynchronize and the communicator still works.
TEST(MpiMismatch, UnmatchedReceiveThrows) {
  Comm* w = test::mpi_world();
  if (!w || w->size() != 2) GTEST_SKIP() << "needs mpirun -np 2";
  auto c = MpiComm::world(short_timeout());
  if (c->rank() == 1) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> buf(4);
    EXPECT_THROW(c->irecv(std::span<float>(buf), 0).wait(), Error);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  }
  w->barrier();  // the long-timeout world: rank 0 waits here while rank 1 times out
  std::vector<int32_t> x{1};
  w->all_reduce(std::span<int32_t>(x), ReduceOp::sum);
  EXPECT_EQ(x[0], 2);
}

// Run only by the test_dist_mpi_abort ctest entry (LCTX_TEST_MPI_ABORT=1): the default
// OnTimeout::abort ends the job with a message.
TEST(MpiAbort, UnmatchedReceiveAbortsTheJob) {
  if (!std::getenv("LCTX_TEST_MPI_ABORT")) GTEST_SKIP() << "run by test_dist_mpi_abort";
  CommOptions o;
  o.timeout_s = 1.0;
  auto c = MpiComm::world(o);
  std::vector<float> buf(4);
  if (c->rank() == 1) c->irecv(std::span<float>(buf), 0).wait();
  else c->barrier();  // never completes either: rank 1 aborts the job first
  ADD_FAILURE() << "the job should have been aborted";
}

}  // namespace
