// GPU sequence parallelism: ring attention with SimComm on one GPU (bf16; the error against an
// f64 reference does not grow with the number of ranks), and NcclComm under mpirun -np 2 on
// two GPUs (every Comm op; ring forward/backward against the f64 reference and, to bf16 noise,
// against the simulated ring on one GPU). Skips without a GPU / without mpirun and 2 GPUs.
#include <gtest/gtest.h>

#include <mutex>

#include "attn/flash.h"
#include "common/check.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/ring_attention.h"
#include "dist_test.h"
#ifdef LCTX_HAVE_CUDA
#include "core/cuda_check.h"
#include "dist/nccl_comm.h"
#endif

using namespace lctx;
using namespace lctx::dist;

namespace {

#ifdef LCTX_HAVE_CUDA

struct GpuCase {
  LayoutKind kind = LayoutKind::zigzag;
  RingMode mode = RingMode::ring;
  bool docs = true;
  int64_t B = 1, S = 1024;
  int Hq = 4, Hkv = 2, D = 64;
};

struct Data {
  Tensor q, k, v, dout, docs;  // bf16 / i32 on the CPU (full sequence)
};

Data make_data(const GpuCase& c) {
  Data d;
  d.q = Tensor::empty({c.B, c.S, c.Hq, c.D}, DType::f32);
  d.k = Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f32);
  d.v = Tensor::empty({c.B, c.S, c.Hkv, c.D}, DType::f32);
  d.dout = Tensor::empty({c.B, c.S, c.Hq, c.D}, DType::f32);
  rng_normal(d.q, 11, 0);
  rng_normal(d.k, 12, 0);
  rng_normal(d.v, 13, 0);
  rng_normal(d.dout, 14, 0);
  for (Tensor* t : {&d.q, &d.k, &d.v, &d.dout}) *t = t->to(DType::bf16);
  std::vector<double> ids;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t s = 0; s < c.S; ++s) ids.push_back(static_cast<double>((s + 37 * b) / 300));
  d.docs = Tensor::from_vector({c.B, c.S}, ids, DType::i32);
  return d;
}

struct Out {
  Tensor o, dq, dk, dv;
};

attn::FlashOptions options() {
  attn::FlashOptions o;
  o.mask = attn::Mask::causal;
  return o;
}

Out reference(const GpuCase& c, const Data& d) {  // f64 on the CPU from the bf16 inputs
  attn::FlashOptions o = options();
  if (c.docs) o.q_doc_ids = o.k_doc_ids = d.docs;
  auto f64 = [](const Tensor& t) { return t.to(DType::f64); };
  auto f = attn::flash_forward(f64(d.q), f64(d.k), f64(d.v), o);
  auto g = attn::flash_backward(f64(d.q), f64(d.k), f64(d.v), f.o, f.lse, f64(d.dout), o);
  return {f.o, g.dq, g.dk, g.dv};
}

// This rank's local results, computed on `dev` with stream `s`, returned on the CPU.
Out run_local(const GpuCase& c, const Data& d, Comm& ring, Device dev, Stream s) {
  const Layout layout(c.kind, c.S, ring.size());
  const int r = ring.rank();
  auto shard = [&](const Tensor& t) { return layout.shard(t, r).to(dev, s); };
  Tensor q = shard(d.q), k = shard(d.k), v = shard(d.v), dout = shard(d.dout);
  attn::FlashOptions o = options();
  if (c.docs) o.q_doc_ids = o.k_doc_ids = shard(d.docs);
  auto f = ring_attention_forward(ring, layout, q, k, v, o, c.mode, s);
  auto g = ring_attention_backward(ring, layout, q, k, v, f.o, f.lse, dout, o, c.mode, attn::OutputDType::input, s);
  synchronize(s);
  return {f.o.to(Device::cpu()), g.dq.to(Device::cpu()), g.dk.to(Device::cpu()), g.dv.to(Device::cpu())};
}

Out unshard_cpu(const GpuCase& c, int n, const std::vector<Out>& locals) {
  const Layout layout(c.kind, c.S, n);
  auto cat = [&](Tensor Out::*m) {
    std::vector<Tensor> parts;
    for (const Out& l : locals) parts.push_back(l.*m);
    return layout.unshard(parts);
  };
  return {cat(&Out::o), cat(&Out::dq), cat(&Out::dk), cat(&Out::dv)};
}

// Runs the ring on n simulated ranks of GPU `gpu`, all on one shared stream (see sim_comm.h).
std::vector<Out> run_sim_gpu(const GpuCase& c, const Data& d, int n, int gpu = 0) {
  LCTX_CUDA_CHECK(cudaSetDevice(gpu));
  cudaStream_t st;
  LCTX_CUDA_CHECK(cudaStreamCreate(&st));
  std::vector<Out> locals(n);
  run_simulated(n, [&](Comm& comm) {
    LCTX_CUDA_CHECK(cudaSetDevice(gpu));
    locals[comm.rank()] = run_local(c, d, comm, Device::cuda(gpu), Stream{st});
  });
  cudaStreamDestroy(st);
  return locals;
}

double worst_error(const Out& got, const Out& ref) {
  return std::max({test::rel_error(got.o, ref.o), test::rel_error(got.dq, ref.dq), test::rel_error(got.dk, ref.dk),
                   test::rel_error(got.dv, ref.dv)});
}
#endif

TEST(RingGpu, SimulatedRanksOnOneGpuBf16) {
  LCTX_REQUIRE_GPU();
  LCTX_SIM_ONLY();
#ifdef LCTX_HAVE_CUDA
  for (GpuCase c : {GpuCase{}, GpuCase{LayoutKind::contiguous, RingMode::ring, false},
                    GpuCase{LayoutKind::zigzag, RingMode::all_gather, true}}) {
    const Data d = make_data(c);
    const Out ref = reference(c, d);
    double err1 = 0;
    for (int n : {1, 2, 4, 8}) {
      const double err = worst_error(unshard_cpu(c, n, run_sim_gpu(c, d, n)), ref);
      std::printf("[ring gpu] %s %s n=%d worst rel error vs f64 %.3e\n", std::string(layout_kind_name(c.kind)).c_str(),
                  std::string(ring_mode_name(c.mode)).c_str(), n, err);
      if (n == 1) err1 = err;
      EXPECT_LT(err, 2e-2) << "n=" << n;
      EXPECT_LE(err, 1.5 * err1 + 2e-3) << "error grows with ranks: n=" << n;
    }
  }
#endif
}

TEST(RingGpu, NcclTwoGpus) {
  LCTX_REQUIRE_GPU();
#ifdef LCTX_HAVE_CUDA
  Comm* w = test::mpi_world();
  if (!w || w->size() != 2 || cuda_device_count() < 2) GTEST_SKIP() << "needs mpirun -np 2 and 2 GPUs";
  auto* mpi = dynamic_cast<MpiComm*>(w);
  ASSERT_NE(mpi, nullptr);
  const int r = w->rank();
  const Device dev = Device::cuda(r);
  NcclComm nc(*mpi, r, test::test_comm_options());
  cudaStream_t st;
  LCTX_CUDA_CHECK(cudaSetDevice(r));
  LCTX_CUDA_CHECK(cudaStreamCreate(&st));  // blocking: ordered with the legacy stream of to_vector()
  const Stream s{st};
  // Comm ops on GPU tensors.
  {
    Tensor send = Tensor::full({5}, r + 1.0, DType::bf16, dev, s), recv = Tensor::zeros({5}, DType::bf16, dev, s);
    nc.sendrecv(send, 1 - r, recv, 1 - r, s).wait(s);
    EXPECT_EQ(recv.to_vector(), std::vector<double>(5, 2.0 - r));
    Tensor t = Tensor::full({3}, r + 1.0, DType::f32, dev, s);
    nc.all_reduce(t, ReduceOp::sum, s);
    EXPECT_EQ(t.to_vector(), std::vector<double>(3, 3.0));
    Tensor g = Tensor::zeros({2, 2}, DType::i32, dev, s);
    nc.all_gather(Tensor::full({2}, r, DType::i32, dev, s), g, s);
    EXPECT_EQ(g.to_vector(), (std::vector<double>{0, 0, 1, 1}));
    Tensor rs = Tensor::zeros({2}, DType::f32, dev, s);
    nc.reduce_scatter(Tensor::full({4}, r + 1.0, DType::f32, dev, s), rs, ReduceOp::max, s);
    EXPECT_EQ(rs.to_vector(), std::vector<double>(2, 2.0));
    Tensor a = Tensor::from_vector({2}, std::vector<double>{10.0 * r, 10.0 * r + 1}, DType::f64).to(dev, s);
    Tensor ao = Tensor::zeros({2}, DType::f64, dev, s);
    nc.all_to_all(a, ao, s);
    EXPECT_EQ(ao.to_vector(), (std::vector<double>{0.0 + r, 10.0 + r}));
    Tensor b = Tensor::full({4}, r, DType::i64, dev, s);
    nc.broadcast(b, 1, s);
    EXPECT_EQ(b.to_vector(), std::vector<double>(4, 1.0));
    auto sub = nc.split(r, 0);
    EXPECT_EQ(sub->size(), 1);
    nc.barrier();
  }
  for (GpuCase c : {GpuCase{}, GpuCase{LayoutKind::zigzag, RingMode::all_gather, true}}) {
    const Data d = make_data(c);
    const Out mine = run_local(c, d, nc, dev, s);
    // The simulated ring of the same size on this process's GPU: the same bits, except dq,
    // which the CUDA flash backward accumulates with fp32 atomics (order not fixed).
    const std::vector<Out> sim = run_sim_gpu(c, d, 2, r);
    if (c.mode == RingMode::ring) {
      EXPECT_EQ(mine.o.to_vector(), sim[r].o.to_vector()) << "o";
      EXPECT_EQ(mine.dk.to_vector(), sim[r].dk.to_vector()) << "dk";
      EXPECT_EQ(mine.dv.to_vector(), sim[r].dv.to_vector()) << "dv";
    }
    const double ddq = test::rel_error(mine.dq, sim[r].dq);
    std::printf("[ring nccl] rank %d %s: dq NcclComm vs SimComm rel diff %.3e\n", r,
                std::string(ring_mode_name(c.mode)).c_str(), ddq);
    EXPECT_LE(ddq, 1e-2);
    const Out ref = reference(c, d);
    const Layout layout(c.kind, c.S, 2);
    auto local_ref = [&](const Tensor& t) { return layout.shard(t, r); };
    EXPECT_LT(test::rel_error(mine.o, local_ref(ref.o)), 2e-2);
    EXPECT_LT(test::rel_error(mine.dq, local_ref(ref.dq)), 2e-2);
    EXPECT_LT(test::rel_error(mine.dk, local_ref(ref.dk)), 2e-2);
    EXPECT_LT(test::rel_error(mine.dv, local_ref(ref.dv)), 2e-2);
  }
  cudaStreamDestroy(st);
#endif
}

}  // namespace
