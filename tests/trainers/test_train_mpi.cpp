// Under `mpirun -np 2`: a training run over MPI ranks (MpiComm) gives bitwise the losses of the
// same job on 2 simulated ranks in one process (both reduce in rank order in f64). Skips when
// not started by mpirun.
#include <gtest/gtest.h>

#include <filesystem>

#include "dist/mpi_comm.h"
#include "trainers/config.h"
#include "trainers/train.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

Config config(const std::string& out, const std::string& layout, int64_t simulate) {
  return parse_config(
      "model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n" + layout +
          "data:\n  source: passkey\n  seq_len: 32\n  batch_size: 4\n"
          "optimizer:\n  lr: 1.0e-2\n  warmup_steps: 2\n"
          "train:\n  steps: 4\n  threads: 1\n"
          "eval:\n  batches: 1\n"
          "checkpoint:\n  save_final: false\n"
          "logging:\n  progress: false\n",
      {"logging.out_dir=" + out, "parallel.simulate=" + std::to_string(simulate)});
}

TEST(TrainMpi, MatchesSimulatedRanks) {
  if (!dist::launched_with_mpi()) GTEST_SKIP() << "run under mpirun -np 2";
  const int rank = dist::mpi_init();
  const std::string base = (fs::temp_directory_path() / ("lctx_train_mpi_" + std::to_string(::getppid()))).string();
  for (const char* layout : {"parallel:\n  sp: 2\n", "parallel:\n  dp: 2\n"}) {
    RunHooks h;
    h.quiet = true;
    const RunResult mpi = run_training(config(base + "/mpi", layout, 0), h);
    if (rank == 0) {
      const RunResult sim = run_training(config(base + "/sim", layout, 2), h);
      ASSERT_EQ(mpi.train.size(), sim.train.size());
      for (size_t i = 0; i < sim.train.size(); ++i) {
        EXPECT_EQ(mpi.train[i].loss, sim.train[i].loss) << layout << " step " << i + 1;
        EXPECT_EQ(mpi.train[i].grad_norm, sim.train[i].grad_norm) << layout << " step " << i + 1;
      }
      ASSERT_EQ(mpi.eval.size(), 1u);
      EXPECT_EQ(mpi.eval[0].loss, sim.eval[0].loss);
      fs::remove_all(base);
    }
  }
}

}  // namespace
