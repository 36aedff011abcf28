// The sequence-parallel primitives over NcclComm (mpirun -np 2, one GPU per rank), on both
// layouts: halo and row_gather (forward and backward) give bit for bit what the same calls give
// over SimComm on the CPU, and state_scan agrees within fp32 rounding. Skips without 2 GPUs
// under mpirun -np 2.
#include <gtest/gtest.h>

#include <vector>

#include "common/check.h"
#include "dist/halo.h"
#include "dist/row_gather.h"
#include "dist/sim_comm.h"
#include "dist/state_scan.h"
#include "dist_test.h"
#include "primitives_test.h"
#ifdef LCTX_HAVE_CUDA
#include "core/cuda_check.h"
#include "dist/nccl_comm.h"
#endif

using namespace lctx;
using namespace lctx::dist;

namespace {

#ifdef LCTX_HAVE_CUDA
// Every output of one rank's calls, on the CPU, in a fixed order.
std::vector<Tensor> run_rank(Comm& c, const Layout& layout, Device dev, Stream s) {
  const int r = c.rank();
  auto to_dev = [&](const Tensor& t) { return t.to(dev, s); };
  std::vector<Tensor> out;
  const Tensor x = to_dev(test::rank_tokens(layout, r, 2, {3}, DType::f32));
  // halo of 7 rows (more than a zigzag chunk of 6), then its adjoint into dx.
  const std::vector<Tensor> halo = halo_forward(c, layout, x, 7, s);
  Tensor dx = to_dev(test::rank_tokens(layout, r, 2, {3}, DType::f32, [](int64_t b, int64_t g, int64_t f) {
    return static_cast<double>((b + g + f) % 3);
  }));
  halo_backward(c, layout, halo, dx, s);
  out.insert(out.end(), halo.begin(), halo.end());
  out.push_back(dx);
  // Strided and global-token rows, repeats included.
  const std::vector<int64_t> positions = {0, 4, 8, 12, 16, 20, 23, 0, 13};
  const Tensor rows = row_gather_forward(c, layout, x, positions, s);
  Tensor dxr = to_dev(Tensor::zeros(x.shape(), DType::f32));
  row_gather_backward(c, layout, rows, positions, dxr, s);
  out.push_back(rows);
  out.push_back(dxr);
  synchronize(s);
  for (Tensor& t : out) t = t.to(Device::cpu());
  // State scan with h0, forward and backward.
  for (Tensor& t : test::scan_outputs(c, layout, test::Recurrence{2, 4, 5}, DType::f32, dev, s)) out.push_back(t);
  return out;
}
#endif

TEST(PrimitivesGpu, NcclEqualsSimComm) {
  LCTX_REQUIRE_GPU();
#ifdef LCTX_HAVE_CUDA
  Comm* w = test::mpi_world();
  if (!w || w->size() != 2 || cuda_device_count() < 2) GTEST_SKIP() << "needs mpirun -np 2 and 2 GPUs";
  auto* mpi = dynamic_cast<MpiComm*>(w);
  ASSERT_NE(mpi, nullptr);
  const int r = w->rank();
  NcclComm nc(*mpi, r, test::test_comm_options());
  LCTX_CUDA_CHECK(cudaSetDevice(r));
  cudaStream_t st;
  LCTX_CUDA_CHECK(cudaStreamCreate(&st));
  for (LayoutKind kind : {LayoutKind::zigzag, LayoutKind::contiguous}) {
    SCOPED_TRACE(std::string(layout_kind_name(kind)));
    const Layout layout(kind, 24, 2, 1);
    const std::vector<Tensor> mine = run_rank(nc, layout, Device::cuda(r), Stream{st});
    std::vector<Tensor> sim;
    run_simulated(2, [&](Comm& c) {
      std::vector<Tensor> o = run_rank(c, layout, Device::cpu(), {});
      if (c.rank() == r) sim = o;
    });
    ASSERT_EQ(mine.size(), sim.size());
    const size_t copies = layout.segments(r).size() + 3;  // halos, dx, rows, dx of the rows
    for (size_t i = 0; i < mine.size(); ++i) {
      SCOPED_TRACE("output " + std::to_string(i));
      if (i < copies)
        EXPECT_EQ(mine[i].to_vector(), sim[i].to_vector());
      else
        LCTX_EXPECT_CLOSE(mine[i], sim[i], 1e-6);
    }
  }
  cudaStreamDestroy(st);
#endif
}

}  // namespace
