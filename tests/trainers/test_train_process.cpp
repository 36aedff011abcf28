// The lctx-train program as users run it: a SIGTERM to the running process makes it save a
// checkpoint and exit 0; a process killed in the middle of writing a checkpoint leaves the
// previous one as the newest valid checkpoint, and `--resume` continues from it with
// bitwise the same losses as an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include "trainers/checkpoint.h"

using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

const char* kConfig =
    "model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n"
    "parallel:\n  sp: 2\n  simulate: 2\n"
    "data:\n  source: passkey\n  seq_len: 32\n  batch_size: 4\n"
    "optimizer:\n  lr: 1.0e-2\n  warmup_steps: 2\n"
    "train:\n  steps: 8\n  threads: 1\n"
    "eval:\n  batches: 0\n"
    "checkpoint:\n  every: 4\n  keep: 5\n"
    "logging:\n  every: 1\n  progress: false\n";

class Program : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("lctx_prog_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ + "/cfg.yaml") << kConfig;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Starts lctx-train with `args` (stdout/stderr to a log) and an extra environment variable.
  pid_t spawn(const std::vector<std::string>& args, const std::string& env = "") const {
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (!env.empty()) ::putenv(const_cast<char*>(env.c_str()));
      const std::string log = dir_ + "/log.txt";
      FILE* f = std::freopen(log.c_str(), "a", stdout);
      (void)f;
      ::dup2(::fileno(stdout), 2);
      std::vector<char*> argv = {const_cast<char*>(LCTX_TRAIN_EXE)};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(LCTX_TRAIN_EXE, argv.data());
      ::_exit(127);
    }
    return pid;
  }

  static int wait_status(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
  }

  // step -> loss from a run's metrics.jsonl.
  static std::map<int64_t, std::string> losses(const std::string& metrics) {
    std::map<int64_t, std::string> m;
    std::ifstream in(metrics);
    static const std::regex re(R"("split": "train", "step": (\d+), "loss": ([^,]+),)");
    for (std::string line; std::getline(in, line);) {
      std::smatch s;
      if (std::regex_search(line, s, re)) m[std::stoll(s[1])] = s[2];
    }
    return m;
  }

  std::string log() const {
    std::ifstream in(dir_ + "/log.txt");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }

  std::string dir_;
};

TEST_F(Program, SigtermSavesAndExitsCleanly) {
  // A long run; SIGTERM once it has logged a few steps.
  const pid_t pid = spawn({dir_ + "/cfg.yaml", "--out", dir_ + "/run", "--set", "train.steps=100000", "--set",
                           "checkpoint.every=0"});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (losses(dir_ + "/run/metrics.jsonl").size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(losses(dir_ + "/run/metrics.jsonl").size(), 3u) << log();
  ::kill(pid, SIGTERM);
  const int status = wait_status(pid);
  ASSERT_TRUE(WIFEXITED(status)) << log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << log();
  const auto ckpts = list_checkpoints(dir_ + "/run/checkpoints");
  ASSERT_EQ(ckpts.size(), 1u) << log();
  const CheckpointState st = load_checkpoint(ckpts[0]);
  EXPECT_GE(st.step, 3);
  EXPECT_EQ(st.step, static_cast<int64_t>(losses(dir_ + "/run/metrics.jsonl").size()));
  EXPECT_NE(log().find("received signal 15"), std::string::npos) << log();
}

TEST_F(Program, KilledDuringSaveResumesFromThePreviousCheckpoint) {
  ASSERT_EQ(wait_status(spawn({dir_ + "/cfg.yaml", "--out", dir_ + "/full"})), 0) << log();
  const auto full = losses(dir_ + "/full/metrics.jsonl");
  ASSERT_EQ(full.size(), 8u);

  // A run that has checkpoints at steps 4 and 8; the one of step 8 is removed, so a resume
  // starts at 4, and that process is killed while writing step 8's checkpoint.
  ASSERT_EQ(wait_status(spawn({dir_ + "/cfg.yaml", "--out", dir_ + "/run"})), 0) << log();
  ASSERT_TRUE(fs::exists(checkpoint_path(dir_ + "/run/checkpoints", 4)));
  ASSERT_TRUE(fs::remove(checkpoint_path(dir_ + "/run/checkpoints", 8)));
  const int status = wait_status(spawn({dir_ + "/cfg.yaml", "--out", dir_ + "/run", "--resume"},
                                       std::string(kCrashEnv) + "=3"));
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << log();
  EXPECT_TRUE(fs::exists(checkpoint_path(dir_ + "/run/checkpoints", 8) + ".tmp"));
  EXPECT_EQ(find_latest_valid(dir_ + "/run/checkpoints"), checkpoint_path(dir_ + "/run/checkpoints", 4));

  // Resuming continues from step 4 and reproduces the uninterrupted losses exactly.
  ASSERT_EQ(wait_status(spawn({dir_ + "/cfg.yaml", "--out", dir_ + "/run", "--resume"})), 0) << log();
  EXPECT_EQ(losses(dir_ + "/run/metrics.jsonl"), full);
  EXPECT_EQ(find_latest_valid(dir_ + "/run/checkpoints"), checkpoint_path(dir_ + "/run/checkpoints", 8));
}

TEST_F(Program, ErrorsAreReportedWithExitCode) {
  std::ofstream(dir_ + "/bad.yaml") << "model:\n  n_layer: 3\n";
  const int status = wait_status(spawn({dir_ + "/bad.yaml"}));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(log().find("unknown key 'model.n_layer' (did you mean 'model.n_layers'?)"), std::string::npos) << log();
}

}  // namespace
