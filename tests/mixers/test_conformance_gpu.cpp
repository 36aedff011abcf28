// The GPU half of the conformance suite: every registered kind (and test variant) in bf16 on
// the GPU, on 1 rank and on 2 simulated ranks sharing it, against the CPU reference in f64 run
// on the same bf16-rounded inputs and parameters. A fixed tolerance would be loose for some
// kinds and flaky for others, so the error is bounded by twice a plain-bf16 baseline: how far
// the f64 reference moves when its inputs and parameters are rounded to bf16 once. A kind's
// MixerKind::test_gpu overrides are added to its cases (nsa picks every block here).
#include <mutex>

#include "common/check.h"
#include "dist/dist_test.h"
#include "mixers/conformance.h"

using namespace lctx;
using namespace lctx::test;

namespace {

class ConformanceGpu : public ::testing::TestWithParam<KindCase> {};

Tensor round_bf16(const Tensor& t) { return t.to(DType::bf16).to(DType::f64); }

Out on_sim_ranks(int n, const std::function<Out(dist::Comm&)>& fn) {
  Out out;
  std::mutex mu;
  dist::run_simulated(n, [&](dist::Comm& comm) {
    Out o = fn(comm);
    std::lock_guard<std::mutex> lock(mu);
    if (comm.rank() == 0) out = o;
  });
  return out;
}

TEST_P(ConformanceGpu, Bf16WithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  KindCase c = GetParam();
  const train::MixerKind& kind = train::mixer_kind(c.kind);
  const MixerShape s{.batch = 2, .seq = 192, .dim = 256, .heads = 4, .kv_heads = 2, .head_dim = 64};
  train::Config on_gpu;
  try {  // what lctx-train refuses on a GPU (MixerKind::cuda, options not on CUDA yet) is skipped
    on_gpu = case_config(c, s, 1, 1, "zigzag", "cuda");
  } catch (const Error& e) {
    GTEST_SKIP() << c.name << ": " << e.what();
  }
  if (kind.test_gpu) {
    const std::vector<std::string> more = kind.test_gpu(on_gpu);
    c.overrides.insert(c.overrides.end(), more.begin(), more.end());
  }
  const Tensor x = random_tokens(s, 21), dy = random_tokens(s, 22);
  for (int n : {1, 2}) {
    const train::Config cfg = case_config(c, s, n, 1, "zigzag");
    Tensor p0;
    const Out exact = on_sim_ranks(n, [&](dist::Comm& comm) {
      Out o = run_sequence_parallel(cfg, comm, x, dy);
      return o;
    });
    // The parameters every run starts from (the table's init), rounded to bf16 once.
    dist::run_simulated(1, [&](dist::Comm& comm) {
      dist::Mesh mesh(comm, {});
      const dist::Layout layout(dist::LayoutKind::zigzag, cfg.data.seq_len, 1, 1);
      p0 = build(cfg, mesh, layout, Device::cpu(), DType::f64, DType::f64)->table.flat_params().clone();
    });
    const Tensor pr = round_bf16(p0), xr = round_bf16(x), dyr = round_bf16(dy);
    SpRun ref_run;
    ref_run.params = pr;
    const Out ref = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, xr, dyr, ref_run); });
    SpRun gpu_run;
    gpu_run.device = Device::cuda();
    gpu_run.master = DType::f32;
    gpu_run.compute = DType::bf16;
    gpu_run.params = pr.to(DType::f32).to(Device::cuda());
    const Out gpu = on_sim_ranks(n, [&](dist::Comm& comm) { return run_sequence_parallel(cfg, comm, xr, dyr, gpu_run); });
    for (const auto& [name, got, want, exact_v] :
         {std::tuple{"y", gpu.y, ref.y, exact.y}, std::tuple{"dx", gpu.dx, ref.dx, exact.dx},
          std::tuple{"grads", gpu.grads, ref.grads, exact.grads}}) {
      const double err = rel_error(got, want), baseline = rel_error(want, exact_v);
      std::printf("[ conform ] %s n=%d %s: bf16 error %.3e, baseline %.3e, ratio %.2f\n", c.name.c_str(), n, name, err,
                  baseline, err / baseline);
      EXPECT_LE(err, 2 * baseline) << c.name << " n=" << n << " " << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, ConformanceGpu, ::testing::ValuesIn(kind_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
