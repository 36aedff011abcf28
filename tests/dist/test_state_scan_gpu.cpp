// state_scan on CUDA tensors (SimComm ranks on one GPU, one shared stream) equals the CPU
// result: forward states and backward gradients, f32 and f64, on a zigzag layout and on one
// whose ranks hold different numbers of segments. Skips without a GPU and under mpirun.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/check.h"
#include "dist/sim_comm.h"
#include "dist/state_scan.h"
#include "dist_test.h"
#include "primitives_test.h"
#ifdef LCTX_HAVE_CUDA
#include "core/cuda_check.h"
#endif

using namespace lctx;
using namespace lctx::dist;

namespace {

#ifdef LCTX_HAVE_CUDA
// Every output of one rank, on the CPU, in a fixed order.
std::vector<Tensor> run_rank(Comm& c, const Layout& layout, const test::Recurrence& rec, DType dtype, Device dev,
                             Stream s) {
  auto to_dev = [&](const Tensor& t) { return t.to(dev, s); };
  std::vector<Affine> local;
  std::vector<Tensor> d_in;
  for (const Affine& a : rec.summaries(layout, c.rank(), dtype)) {
    local.push_back({to_dev(a.a), to_dev(a.e)});
    d_in.push_back(to_dev(a.e));  // any values of the state's shape
  }
  const Tensor h0 = to_dev(rec.state_tensor(rec.initial(true), dtype));
  const ScanResult f = state_scan_forward(c, layout, local, h0, s);
  const ScanGrads g = state_scan_backward(c, layout, local, f, d_in, h0, s);
  std::vector<Tensor> out(f.incoming.begin(), f.incoming.end());
  out.push_back(f.final_state);
  for (const Affine& d : g.d_local) {
    out.push_back(d.a);
    out.push_back(d.e);
  }
  out.push_back(g.d_h0);
  synchronize(s);
  for (Tensor& t : out) t = t.to(Device::cpu());
  return out;
}
#endif

TEST(StateScanGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  LCTX_SIM_ONLY();
#ifdef LCTX_HAVE_CUDA
  const test::Recurrence rec{2, 4, 40};  // m > 32: several elements per lane in the da reduction
  const test::LayoutCase cases[] = {{LayoutKind::zigzag, 4, 1}, {LayoutKind::zigzag, 2, 3}};
  for (const test::LayoutCase& lc : cases)
    for (DType dtype : {DType::f32, DType::f64}) {
      SCOPED_TRACE(lc.name() + " " + std::string(dtype_name(dtype)));
      const Layout layout = lc.layout();
      std::vector<std::vector<Tensor>> cpu(layout.size()), gpu(layout.size());
      run_simulated(layout.size(),
                    [&](Comm& c) { cpu[c.rank()] = run_rank(c, layout, rec, dtype, Device::cpu(), {}); });
      LCTX_CUDA_CHECK(cudaSetDevice(0));
      cudaStream_t st;
      LCTX_CUDA_CHECK(cudaStreamCreate(&st));
      run_simulated(layout.size(), [&](Comm& c) {
        LCTX_CUDA_CHECK(cudaSetDevice(0));
        gpu[c.rank()] = run_rank(c, layout, rec, dtype, Device::cuda(0), Stream{st});
      });
      cudaStreamDestroy(st);
      const double tol = dtype == DType::f64 ? 1e-13 : 1e-6;
      for (int r = 0; r < layout.size(); ++r) {
        ASSERT_EQ(gpu[r].size(), cpu[r].size());
        for (size_t i = 0; i < cpu[r].size(); ++i) {
          SCOPED_TRACE("rank " + std::to_string(r) + " output " + std::to_string(i));
          LCTX_EXPECT_CLOSE(gpu[r][i], cpu[r][i], tol);
        }
      }
    }
#endif
}

}  // namespace
