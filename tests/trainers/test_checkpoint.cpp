// Checkpoint files: round trip, per-dataset checksums, corrupt and truncated files rejected
// (auto-resume skips them with a warning), retention, and atomicity: a process killed in the
// middle of a save leaves the previous checkpoint loadable and no half-written step file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "trainers/checkpoint.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

CheckpointState make_state(int64_t step, float base) {
  CheckpointState st;
  st.step = step;
  st.adam_step = step - 1;
  st.data_consumed_samples = step * 8;
  st.data_seed = 5;
  st.skipped_steps = 1;
  st.mesh_dp = 2;
  st.mesh_sp = 4;
  st.config_yaml = "model:\n  dim: 8\n";
  for (const char* name : {"embedding", "layers.0.wqkv", "final_norm"}) {
    const Shape shape = std::string(name) == "final_norm" ? Shape{8} : Shape{16, 8};
    Tensor p = Tensor::empty(shape, DType::f32), m = Tensor::empty(shape, DType::f32), v = Tensor::empty(shape, DType::f32);
    for (int64_t i = 0; i < p.numel(); ++i) {
      p.data<float>()[i] = base + 0.001f * static_cast<float>(i);
      m.data<float>()[i] = -0.5f * static_cast<float>(i);
      v.data<float>()[i] = 0.25f * static_cast<float>(i);
    }
    st.params.emplace_back(name, p);
    st.adam_m.emplace_back(name, m);
    st.adam_v.emplace_back(name, v);
  }
  st.rng_state = {1, 2, 3, 4, 5, 6, 7, 8};
  return st;
}

const Tensor& find(const std::vector<std::pair<std::string, Tensor>>& v, const std::string& n) {
  for (const auto& [name, t] : v)
    if (name == n) return t;
  throw std::runtime_error("missing " + n);
}

class Checkpoints : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("lctx_ckpt_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

std::string load_error(const std::string& f) {
  try {
    load_checkpoint(f);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_F(Checkpoints, RoundTrip) {
  const CheckpointState st = make_state(12, 1.5f);
  save_checkpoint(dir_, st, 3);
  const std::string f = checkpoint_path(dir_, 12);
  ASSERT_TRUE(fs::exists(f));
  EXPECT_FALSE(fs::exists(f + ".tmp"));
  const CheckpointState r = load_checkpoint(f);
  EXPECT_EQ(r.step, 12);
  EXPECT_EQ(r.adam_step, 11);
  EXPECT_EQ(r.data_consumed_samples, 96);
  EXPECT_EQ(r.data_seed, 5);
  EXPECT_EQ(r.skipped_steps, 1);
  EXPECT_EQ(r.mesh_dp, 2);
  EXPECT_EQ(r.mesh_sp, 4);
  EXPECT_EQ(r.config_yaml, st.config_yaml);
  EXPECT_EQ(r.rng_state, st.rng_state);
  ASSERT_EQ(r.params.size(), st.params.size());
  for (const auto& [name, t] : st.params) {
    EXPECT_EQ(find(r.params, name).shape(), t.shape());
    EXPECT_EQ(find(r.params, name).to_vector(), t.to_vector()) << name;
    EXPECT_EQ(find(r.adam_m, name).to_vector(), find(st.adam_m, name).to_vector()) << name;
    EXPECT_EQ(find(r.adam_v, name).to_vector(), find(st.adam_v, name).to_vector()) << name;
  }
}

TEST_F(Checkpoints, H5dumpReadsIt) {
  if (std::system("command -v h5dump >/dev/null 2>&1") != 0) GTEST_SKIP() << "no h5dump";
  save_checkpoint(dir_, make_state(3, 0.f), 3);
  const std::string cmd = "h5dump -H " + checkpoint_path(dir_, 3) + " > " + dir_ + "/dump.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(dir_ + "/dump.txt");
  const std::string dump((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* s : {"GROUP \"params\"", "DATASET \"layers.0.wqkv\"", "checksum", "format_version", "DATASPACE  SIMPLE { ( 16, 8 )"})
    EXPECT_NE(dump.find(s), std::string::npos) << s << "\n" << dump.substr(0, 2000);
}

TEST_F(Checkpoints, RetentionKeepsNewest) {
  for (int64_t s = 1; s <= 5; ++s) save_checkpoint(dir_, make_state(s * 10, 0.f), 2);
  const auto l = list_checkpoints(dir_);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0], checkpoint_path(dir_, 50));
  EXPECT_EQ(l[1], checkpoint_path(dir_, 40));
}

// Flips one byte inside a parameter's data: its checksum no longer matches.
TEST_F(Checkpoints, BitFlipIsDetected) {
  save_checkpoint(dir_, make_state(10, 1.f), 3);
  save_checkpoint(dir_, make_state(20, 2.f), 3);
  const std::string f = checkpoint_path(dir_, 20);
  {
    // Locate the float data of "embedding" (value 2.0f + 0.001 * 5 at index 5) and change it.
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(io)), std::istreambuf_iterator<char>());
    const float needle = 2.0f + 0.001f * 5.0f;
    const std::string pat(reinterpret_cast<const char*>(&needle), 4);
    const size_t at = bytes.find(pat);
    ASSERT_NE(at, std::string::npos);
    io.seekp(static_cast<std::streamoff>(at));
    const char flipped = static_cast<char>(bytes[at] ^ 0x10);
    io.write(&flipped, 1);
  }
  const std::string err = load_error(f);
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_valid(dir_, &warnings), checkpoint_path(dir_, 10));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("skipping checkpoint"), std::string::npos);
}

TEST_F(Checkpoints, TruncatedFileIsRejected) {
  save_checkpoint(dir_, make_state(10, 1.f), 3);
  save_checkpoint(dir_, make_state(20, 2.f), 3);
  const std::string f = checkpoint_path(dir_, 20);
  fs::resize_file(f, fs::file_size(f) / 2);
  EXPECT_FALSE(load_error(f).empty());
  EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 10));
  // An empty (0-byte) newest file too.
  save_checkpoint(dir_, make_state(30, 3.f), 5);
  fs::resize_file(checkpoint_path(dir_, 30), 0);
  EXPECT_NE(load_error(checkpoint_path(dir_, 30)).find("not a valid HDF5 file"), std::string::npos);
  EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 10));
}

TEST_F(Checkpoints, NoValidCheckpoint) {
  EXPECT_EQ(find_latest_valid(dir_), "");
  EXPECT_NE(load_error(dir_ + "/step-00000001.h5").find("does not exist"), std::string::npos);
}

// A child process is killed (SIGKILL) after writing 2 datasets of a save; the previous
// checkpoint stays the newest valid one and the partial file is only a .tmp.
TEST_F(Checkpoints, KillDuringSaveLeavesPreviousLoadable) {
  save_checkpoint(dir_, make_state(10, 1.f), 3);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setenv(kCrashEnv, "2", 1);
    try {
      save_checkpoint(dir_, make_state(20, 2.f), 3);
    } catch (...) {
    }
    ::_exit(0);  // not reached when the crash hook fires
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child was expected to die mid-save";
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_TRUE(fs::exists(checkpoint_path(dir_, 20) + ".tmp"));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir_, 20)));
  EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 10));
  EXPECT_EQ(load_checkpoint(checkpoint_path(dir_, 10)).step, 10);
  // The next save of that step replaces the stale .tmp.
  save_checkpoint(dir_, make_state(20, 2.f), 3);
  EXPECT_FALSE(fs::exists(checkpoint_path(dir_, 20) + ".tmp"));
  EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 20));
}

}  // namespace
