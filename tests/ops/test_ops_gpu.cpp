// Every CUDA op against the CPU reference. Inputs are drawn once in f32, rounded to the tested
// dtype, and the same rounded values feed the CPU (f32) and the GPU (f32 / bf16 / f16), so the
// differences measure only the GPU computation and its output rounding. Tolerances are relative
// L2 errors (common/check.h): f32 1e-5 (1e-4 where long fp32 sums differ in order), 16-bit
// outputs 1e-2 (bf16 keeps 8 mantissa bits: one rounding is <= 2^-9 = 0.002 relative).
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "common/check.h"
#include "core/cuda_check.h"
#include "ops/adamw.h"
#include "ops/argmax.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gelu.h"
#include "ops/grad_clip.h"
#include "ops/layernorm.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops/residual.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "ops_test_util.h"

using namespace lctx;
using namespace lctx::ops;
using lctx::test::randn;

namespace {

const Device kGpu = Device::cuda(0);

struct Both {
  Tensor cpu;  // f32 on the CPU
  Tensor gpu;  // `dt` on the GPU, same values
};

Both make(const Shape& shape, uint64_t seed, DType dt, double mean = 0.0, double std = 1.0) {
  Tensor base = randn(shape, seed, DType::f32, mean, std).to(dt);
  return {base.to(DType::f32), base.to(kGpu)};
}

Tensor cpu_empty(const Shape& s, DType dt = DType::f32) { return Tensor::empty(s, dt); }
Tensor gpu_empty(const Shape& s, DType dt) { return Tensor::empty(s, dt, kGpu); }

double tol(DType dt) { return dt == DType::f32 ? 1e-5 : 1e-2; }

class OpsGpu : public ::testing::TestWithParam<DType> {};

TEST_P(OpsGpu, MatmulAllTransposes) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{128, 256, 64}, {33, 65, 17}, {1, 7, 300}}) {
    for (Trans ta : {Trans::none, Trans::transpose}) {
      for (Trans tb : {Trans::none, Trans::transpose}) {
        Both a = make(ta == Trans::none ? Shape{m, k} : Shape{k, m}, 1, dt);
        Both b = make(tb == Trans::none ? Shape{k, n} : Shape{n, k}, 2, dt);
        Both c = make({m, n}, 3, dt);
        matmul(c.cpu, a.cpu, b.cpu, ta, tb, 0.5f, 1.5f);
        matmul(c.gpu, a.gpu, b.gpu, ta, tb, 0.5f, 1.5f);
        EXPECT_LE(test::rel_error(c.gpu, c.cpu), tol(dt)) << m << "x" << n << "x" << k << " " << int(ta) << int(tb);
        // 16-bit inputs into an fp32 output (how weight gradients accumulate): fp32 accuracy.
        Tensor c32 = gpu_empty({m, n}, DType::f32);
        matmul(c32, a.gpu, b.gpu, ta, tb);
        Tensor ref = cpu_empty({m, n});
        matmul(ref, a.cpu, b.cpu, ta, tb);
        EXPECT_LE(test::rel_error(c32, ref), 1e-5);
      }
    }
  }
}

TEST_P(OpsGpu, ArgmaxRows) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  for (int64_t v : {1, 33, 256, 5000}) {
    Both x = make({70, v}, 21, dt);
    // Exact ties in the rounded values: the first index wins on both devices.
    if (v > 40) {
      x.gpu.slice(0, 0, 10).slice(1, 5, 40).fill(9.0);
      x.cpu.slice(0, 0, 10).slice(1, 5, 40).fill(9.0);
    }
    Tensor want = cpu_empty({70}, DType::i32), got = gpu_empty({70}, DType::i32);
    argmax_rows(want, x.cpu);
    argmax_rows(got, x.gpu);
    EXPECT_EQ(got.to_vector(), want.to_vector()) << v;
  }
}

TEST_P(OpsGpu, Linear) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t b = 3, s = 37, k = 96, n = 80;
  Both x = make({b, s, k}, 1, dt), w = make({n, k}, 2, dt, 0.0, 0.1), bias = make({n}, 3, dt), dy = make({b, s, n}, 4, dt);
  Tensor yc = cpu_empty({b, s, n}), yg = gpu_empty({b, s, n}, dt);
  linear_forward(yc, x.cpu, w.cpu, bias.cpu);
  linear_forward(yg, x.gpu, w.gpu, bias.gpu);
  EXPECT_LE(test::rel_error(yg, yc), tol(dt));
  Tensor dxc = cpu_empty({b, s, k}), dwc = cpu_empty({n, k}), dbc = cpu_empty({n});
  Tensor dxg = gpu_empty({b, s, k}, dt), dwg = gpu_empty({n, k}, DType::f32), dbg = gpu_empty({n}, DType::f32);
  for (GradMode mode : {GradMode::overwrite, GradMode::accumulate}) {
    linear_backward(dxc, dwc, dbc, dy.cpu, x.cpu, w.cpu, mode);
    linear_backward(dxg, dwg, dbg, dy.gpu, x.gpu, w.gpu, mode);
    EXPECT_LE(test::rel_error(dxg, dxc), tol(dt));
    EXPECT_LE(test::rel_error(dwg, dwc), 1e-5);  // fp32 output from identical inputs
    EXPECT_LE(test::rel_error(dbg, dbc), 1e-5);
  }
}

TEST_P(OpsGpu, Embedding) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t b = 4, s = 33, v = 50, d = 72;
  std::vector<double> idv(b * s);
  for (int64_t i = 0; i < b * s; ++i) idv[i] = static_cast<double>((i * 13 + 5) % v);
  Tensor ids = Tensor::from_vector({b, s}, idv, DType::i32);
  Both w = make({v, d}, 1, dt), dout = make({b, s, d}, 2, dt);
  Tensor oc = cpu_empty({b, s, d}), og = gpu_empty({b, s, d}, dt);
  embedding_forward(oc, ids, w.cpu);
  embedding_forward(og, ids.to(kGpu), w.gpu);
  EXPECT_EQ(og.to_vector(), oc.to_vector());  // a gather is exact
  Tensor dwc = cpu_empty({v, d}), dwg = gpu_empty({v, d}, DType::f32);
  for (GradMode mode : {GradMode::overwrite, GradMode::accumulate}) {
    embedding_backward(dwc, ids, dout.cpu, mode);
    embedding_backward(dwg, ids.to(kGpu), dout.gpu, mode);
    EXPECT_LE(test::rel_error(dwg, dwc), 1e-6);
  }
}

TEST_P(OpsGpu, RmsNormAndLayerNorm) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  // Vector and scalar loads; rows held in registers and (40000 columns) re-read per pass.
  for (const Shape& xs : {Shape{4, 3, 1024}, Shape{5, 37}, Shape{2, 4104}, Shape{2, 40000}}) {
    const int64_t c = xs.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < xs.size(); ++i) rows *= xs[i];
    Both x = make(xs, 1, dt, 0.5, 2.0), w = make({c}, 2, dt, 1.0, 0.2), b = make({c}, 3, dt), dy = make(xs, 4, dt);
    Tensor oc = cpu_empty(xs), og = gpu_empty(xs, dt);
    Tensor mc = cpu_empty({rows}), rc = cpu_empty({rows}), mg = gpu_empty({rows}, DType::f32), rg = gpu_empty({rows}, DType::f32);
    Tensor dxc = cpu_empty(xs), dxg = gpu_empty(xs, dt);
    Tensor dwc = cpu_empty({c}), dbc = cpu_empty({c}), dwg = gpu_empty({c}, DType::f32), dbg = gpu_empty({c}, DType::f32);

    rmsnorm_forward(oc, rc, x.cpu, w.cpu, 1e-5f);
    rmsnorm_forward(og, rg, x.gpu, w.gpu, 1e-5f);
    EXPECT_LE(test::rel_error(og, oc), tol(dt)) << shape_str(xs);
    EXPECT_LE(test::rel_error(rg, rc), 1e-5) << shape_str(xs);
    rmsnorm_backward(dxc, dwc, dy.cpu, x.cpu, w.cpu, rc, GradMode::overwrite);
    rmsnorm_backward(dxg, dwg, dy.gpu, x.gpu, w.gpu, rg, GradMode::overwrite);
    EXPECT_LE(test::rel_error(dxg, dxc), tol(dt)) << shape_str(xs);
    EXPECT_LE(test::rel_error(dwg, dwc), 1e-4) << shape_str(xs);

    layernorm_forward(oc, mc, rc, x.cpu, w.cpu, b.cpu, 1e-5f);
    layernorm_forward(og, mg, rg, x.gpu, w.gpu, b.gpu, 1e-5f);
    EXPECT_LE(test::rel_error(og, oc), tol(dt)) << shape_str(xs);
    EXPECT_LE(test::rel_error(mg, mc), 1e-5) << shape_str(xs);
    EXPECT_LE(test::rel_error(rg, rc), 1e-5) << shape_str(xs);
    for (GradMode mode : {GradMode::overwrite, GradMode::accumulate}) {
      layernorm_backward(dxc, dwc, dbc, dy.cpu, x.cpu, w.cpu, mc, rc, mode);
      layernorm_backward(dxg, dwg, dbg, dy.gpu, x.gpu, w.gpu, mg, rg, mode);
      EXPECT_LE(test::rel_error(dxg, dxc), tol(dt)) << shape_str(xs);
      EXPECT_LE(test::rel_error(dwg, dwc), 1e-4) << shape_str(xs);
      EXPECT_LE(test::rel_error(dbg, dbc), 1e-4) << shape_str(xs);
    }
  }
}

TEST_P(OpsGpu, SwigluGeluResidual) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  const Shape half{3, 5, 131}, packed{3, 5, 262};
  Both in = make(packed, 1, dt, 0.0, 2.0), dout = make(half, 2, dt);
  Tensor oc = cpu_empty(half), og = gpu_empty(half, dt), dic = cpu_empty(packed), dig = gpu_empty(packed, dt);
  swiglu_forward(oc, in.cpu);
  swiglu_forward(og, in.gpu);
  EXPECT_LE(test::rel_error(og, oc), tol(dt));
  swiglu_backward(dic, dout.cpu, in.cpu);
  swiglu_backward(dig, dout.gpu, in.gpu);
  EXPECT_LE(test::rel_error(dig, dic), tol(dt));

  Both x = make(half, 3, dt, 0.0, 2.0);
  Tensor gc = cpu_empty(half), gg = gpu_empty(half, dt);
  gelu_forward(gc, x.cpu);
  gelu_forward(gg, x.gpu);
  EXPECT_LE(test::rel_error(gg, gc), tol(dt));
  gelu_backward(gc, dout.cpu, x.cpu);
  gelu_backward(gg, dout.gpu, x.gpu);
  EXPECT_LE(test::rel_error(gg, gc), tol(dt));

  Tensor rc = cpu_empty(half), rg = gpu_empty(half, dt);
  residual_forward(rc, x.cpu, dout.cpu);
  residual_forward(rg, x.gpu, dout.gpu);
  EXPECT_LE(test::rel_error(rg, rc), tol(dt));
  // Accumulating a 16-bit gradient into fp32 twice.
  Tensor acc_c = Tensor::zeros(half, DType::f32), acc_g = Tensor::zeros(half, DType::f32, kGpu), none;
  for (int i = 0; i < 2; ++i) {
    residual_backward(acc_c, none, dout.cpu, GradMode::accumulate);
    residual_backward(acc_g, none, dout.gpu, GradMode::accumulate);
  }
  EXPECT_LE(test::rel_error(acc_g, acc_c), 1e-7);
}

TEST_P(OpsGpu, Rope) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t b = 2, s = 19, h = 3, d = 64;
  std::vector<double> pv(b * s);
  for (int64_t i = 0; i < b * s; ++i) pv[i] = static_cast<double>(1000003 + 97 * i);  // long-context positions
  Tensor pos = Tensor::from_vector({b, s}, pv, DType::i32);
  Both x = make({b, s, h, d}, 1, dt);
  Tensor oc = cpu_empty({b, s, h, d}), og = gpu_empty({b, s, h, d}, dt);
  rope_forward(oc, x.cpu, pos, 500000.0);
  rope_forward(og, x.gpu, pos.to(kGpu), 500000.0);
  EXPECT_LE(test::rel_error(og, oc), tol(dt));
  rope_backward(oc, x.cpu, pos.slice(0, 0, 1).view({s}), 10000.0);
  rope_backward(og, x.gpu, pos.slice(0, 0, 1).view({s}).to(kGpu), 10000.0);
  EXPECT_LE(test::rel_error(og, oc), tol(dt));
}

TEST_P(OpsGpu, CrossEntropy) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [n, v] : {std::pair<int64_t, int64_t>{37, 1000}, {8, 50257}}) {
    std::vector<double> tv(n);
    for (int64_t r = 0; r < n; ++r) tv[r] = r % 4 == 2 ? -100 : static_cast<double>((r * 7919) % v);
    Tensor t = Tensor::from_vector({n}, tv, DType::i32);
    Both z = make({n, v}, 1, dt, 0.0, 4.0);
    CrossEntropyOptions opts;
    opts.loss_scale = 3.0f;
    Tensor lc = cpu_empty({n}), mc = cpu_empty({1}), dc = cpu_empty({n, v});
    Tensor lg = gpu_empty({n}, DType::f32), mg = gpu_empty({1}, DType::f32), dg = z.gpu.clone();
    cross_entropy_forward_backward(lc, mc, dc, z.cpu, t, opts);
    cross_entropy_forward_backward(lg, mg, dg, dg, t.to(kGpu), opts);  // in place
    EXPECT_LE(test::rel_error(lg, lc), 1e-5) << n << "x" << v;
    EXPECT_NEAR(mg.item(), mc.item(), 1e-5 * mc.item());
    EXPECT_LE(test::rel_error(dg, dc), tol(dt) + 1e-5) << n << "x" << v;
    Tensor lg2 = gpu_empty({n}, DType::f32);
    cross_entropy_forward(lg2, mg, z.gpu, t.to(kGpu), opts);
    EXPECT_EQ(lg2.to_vector(), lg.to_vector());
  }
}

TEST_P(OpsGpu, AdamW) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t n = 1000;
  Tensor master_c = randn({n}, 1, DType::f32), m_c = Tensor::zeros({n}, DType::f32), v_c = Tensor::zeros({n}, DType::f32);
  Tensor master_g = master_c.to(kGpu), m_g = m_c.to(kGpu), v_g = v_c.to(kGpu);
  Tensor pc = cpu_empty({n}), pg = gpu_empty({n}, dt);
  AdamWConfig cfg{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int step = 1; step <= 3; ++step) {
    Both g = make({n}, 10 + step, dt);
    adamw_update(pc, master_c, m_c, v_c, g.cpu, cfg, step, 0.5f);
    adamw_update(pg, master_g, m_g, v_g, g.gpu, cfg, step, 0.5f);
  }
  EXPECT_LE(test::rel_error(master_g, master_c), 1e-6);
  EXPECT_LE(test::rel_error(m_g, m_c), 1e-6);
  EXPECT_LE(test::rel_error(v_g, v_c), 1e-6);
  EXPECT_EQ(pg.to_vector(), master_g.to(dt).to_vector());  // the param copy is the rounded master
}

TEST_P(OpsGpu, GradClip) {
  LCTX_REQUIRE_GPU();
  const DType dt = GetParam();
  std::vector<Both> both = {make({300, 70}, 1, dt), make({5}, 2, dt), make({100003}, 3, dt)};
  std::vector<Tensor> gc, gg;
  for (auto& b : both) {
    gc.push_back(b.cpu);
    gg.push_back(b.gpu);
  }
  const GradNorm rc = clip_grad_norm(gc, 10.0), rg = clip_grad_norm(gg, 10.0);
  EXPECT_NEAR(rg.norm, rc.norm, 1e-5 * rc.norm);
  ASSERT_TRUE(rg.clipped);
  for (size_t i = 0; i < gc.size(); ++i) EXPECT_LE(test::rel_error(gg[i], gc[i]), tol(dt));
  gg[1].slice(0, 2, 3).fill(NAN);
  const auto keep = gg[0].to_vector();
  const GradNorm bad = clip_grad_norm(gg, 1.0);
  EXPECT_FALSE(bad.finite);
  EXPECT_FALSE(bad.clipped);
  EXPECT_EQ(gg[0].to_vector(), keep);
}

INSTANTIATE_TEST_SUITE_P(Ops, OpsGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(OpsGpuMisc, F16Matmul) {
  LCTX_REQUIRE_GPU();
  Both a = make({64, 96}, 1, DType::f16), b = make({80, 96}, 2, DType::f16);
  Tensor cc = cpu_empty({64, 80}), cg = gpu_empty({64, 80}, DType::f16);
  matmul(cc, a.cpu, b.cpu, Trans::none, Trans::transpose);
  matmul(cg, a.gpu, b.gpu, Trans::none, Trans::transpose);
  EXPECT_LE(test::rel_error(cg, cc), 2e-3);
}

#ifdef LCTX_HAVE_CUDA
// Simulated ranks are threads: each uses its own cuBLASLt handle and workspace concurrently.
TEST(OpsGpuMisc, MatmulFromManyThreads) {
  LCTX_REQUIRE_GPU();
  Both a = make({256, 512}, 1, DType::bf16), b = make({384, 512}, 2, DType::bf16);
  Tensor ref = cpu_empty({256, 384});
  matmul(ref, a.cpu, b.cpu, Trans::none, Trans::transpose);
  std::vector<double> errs(4, -1);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      cudaStream_t st;
      LCTX_CUDA_CHECK(cudaStreamCreate(&st));
      Tensor c = gpu_empty({256, 384}, DType::f32);
      for (int rep = 0; rep < 20; ++rep) matmul(c, a.gpu, b.gpu, Trans::none, Trans::transpose, 1.0f, 0.0f, {st});
      synchronize({st});
      errs[t] = test::rel_error(c, ref);
      LCTX_CUDA_CHECK(cudaStreamDestroy(st));
    });
  }
  for (auto& th : threads) th.join();
  for (double e : errs) EXPECT_LE(e, 1e-5);
}
#endif

TEST(OpsGpuMisc, RejectsMixedDevicesAndF64) {
  LCTX_REQUIRE_GPU();
  Tensor x = gpu_empty({4, 8}, DType::f32), out = gpu_empty({4, 8}, DType::f32), rstd = gpu_empty({4}, DType::f32);
  Tensor w_cpu = Tensor::zeros({8}, DType::f32);
  test::expect_error([&] { rmsnorm_forward(out, rstd, x, w_cpu); },
                     {"rmsnorm_forward", "different devices", "@cuda:0", "@cpu"});
  Tensor x64 = gpu_empty({4, 8}, DType::f64);
  test::expect_error([&] { gelu_forward(x64, x64); }, {"gelu_forward", "x", "f32, bf16 or f16 on CUDA"});
  Tensor y = gpu_empty({4, 4}, DType::bf16), wb = gpu_empty({4, 8}, DType::f32), none;
  test::expect_error([&] { linear_forward(y, x, wb, none); }, {"matmul", "c", "f32"});
}

}  // namespace
