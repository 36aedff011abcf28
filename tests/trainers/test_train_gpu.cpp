// lctx-train on a GPU (skips without one): bf16 compute with fp32 master weights follows the
// f32 CPU run and learns, ring attention over simulated ranks sharing the GPU matches one rank,
// and a GPU checkpoint resumes on the CPU. Head dim 64: the CUDA attention kernels' smallest.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/check.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/train.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

class TrainGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("lctx_train_gpu_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config config(const std::string& run, std::vector<std::string> extra) const {
    extra.push_back("logging.out_dir=" + dir_ + "/" + run);
    return parse_config(
        "model:\n  vocab_size: 32\n  dim: 128\n  n_layers: 2\n  n_heads: 2\n  n_kv_heads: 1\n"
        "data:\n  source: passkey\n  seq_len: 256\n  batch_size: 8\n"
        "optimizer:\n  lr: 3.0e-3\n  warmup_steps: 5\n"
        "train:\n  steps: 30\n"
        "eval:\n  batches: 2\n"
        "logging:\n  progress: false\n",
        extra);
  }

  static RunResult run(const Config& c) {
    RunHooks h;
    h.quiet = true;
    return run_training(c, h);
  }

  std::string dir_;
};

TEST_F(TrainGpu, Bf16FollowsCpuAndLearns) {
  LCTX_REQUIRE_GPU();
  const RunResult cpu = run(config("cpu", {"train.device=cpu"}));
  const RunResult bf16 = run(config("bf16", {"train.device=cuda", "model.dtype=bf16"}));
  ASSERT_EQ(cpu.train.size(), 30u);
  ASSERT_EQ(bf16.train.size(), 30u);
  for (size_t i = 0; i < 5; ++i)
    EXPECT_NEAR(bf16.train[i].loss, cpu.train[i].loss, 3e-2 * cpu.train[i].loss) << "step " << i + 1;
  EXPECT_LT(bf16.train.back().loss, 0.8 * bf16.train.front().loss);
  for (const auto& r : bf16.train) EXPECT_FALSE(r.skipped);
}

TEST_F(TrainGpu, RingOnSimulatedRanksMatchesOneRank) {
  LCTX_REQUIRE_GPU();
  const RunResult one = run(config("one", {"train.device=cuda", "train.steps=5"}));
  const RunResult ring = run(config("ring", {"train.device=cuda", "train.steps=5", "mixer.softmax.sp=ring",
                                             "parallel.sp=4", "parallel.simulate=4"}));
  ASSERT_EQ(ring.train.size(), one.train.size());
  // bf16 compute: the ring merges fp32 partials, one rank rounds once; both within bf16 noise.
  for (size_t i = 0; i < one.train.size(); ++i)
    EXPECT_NEAR(ring.train[i].loss, one.train[i].loss, 1e-2 * one.train[i].loss) << "step " << i + 1;
}

TEST_F(TrainGpu, Bf16CheckpointResumesOnCpu) {
  LCTX_REQUIRE_GPU();
  run(config("gpu", {"train.device=cuda", "model.dtype=bf16", "train.steps=10"}));
  const std::string ckpt = dir_ + "/gpu/checkpoints/step-00000010.h5";
  ASSERT_TRUE(fs::exists(ckpt));
  const CheckpointState st = load_checkpoint(ckpt);
  // Master weights are fp32: not all representable in bf16 after 10 AdamW steps.
  bool wider_than_bf16 = false;
  for (const auto& [name, t] : st.params)
    for (double v : t.to_vector()) wider_than_bf16 |= static_cast<float>(bf16(static_cast<float>(v))) != static_cast<float>(v);
  EXPECT_TRUE(wider_than_bf16);
  const RunResult cpu = run(config("gpu", {"train.device=cpu", "train.steps=12", "checkpoint.resume=" + ckpt}));
  EXPECT_EQ(cpu.start_step, 10);
  ASSERT_EQ(cpu.train.size(), 2u);
  EXPECT_TRUE(std::isfinite(cpu.train[0].loss));
}

}  // namespace
