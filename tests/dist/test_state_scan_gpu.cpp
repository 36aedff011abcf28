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
                    [&](Comm& c) { cpu[c.rank()] = test::scan_outputs(c, layout, rec, dtype, Device::cpu(), {}); });
      LCTX_CUDA_CHECK(cudaSetDevice(0));
      cudaStream_t st;
      LCTX_CUDA_CHECK(cudaStreamCreate(&st));
      run_simulated(layout.size(), [&](Comm& c) {
        LCTX_CUDA_CHECK(cudaSetDevice(0));
        gpu[c.rank()] = test::scan_outputs(c, layout, rec, dtype, Device::cuda(0), Stream{st});
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
