// Checkpoint files: round trip, per-dataset checksums, corrupt and truncated files rejected
// (auto-resume skips them with a warning), retention (verified checkpoints are never deleted
// because of newer corrupt or abandoned files), atomicity (a process killed in the middle of a
// save leaves the previous checkpoint loadable and no half-written step file), dataset shapes
// checked before allocating, attribute checksums and ranges, and format-1 files.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "common/checkpoint_files.h"
#include "trainers/checkpoint.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;
using namespace lctx::test::ckpt;

namespace {

CheckpointState make_state(int64_t step, float base, const std::vector<std::pair<std::string, Shape>>& extra = {}) {
  CheckpointState st;
  st.step = step;
  st.adam_step = step - 1;
  st.data_consumed_samples = step * 8;
  st.data_seed = 5;
  st.skipped_steps = 1;
  st.mesh_dp = 2;
  st.mesh_sp = 2;  // 4 ranks: 4 rng (seed, offset) pairs
  st.config_yaml = "model:\n  dim: 8\n";
  std::vector<std::pair<std::string, Shape>> specs = {
      {"embedding", {16, 8}}, {"layers.0.wqkv", {16, 8}}, {"final_norm", {8}}};
  specs.insert(specs.end(), extra.begin(), extra.end());
  for (const auto& [name, shape] : specs) {
    Tensor p = Tensor::empty(shape, DType::f32), m = Tensor::empty(shape, DType::f32),
           v = Tensor::empty(shape, DType::f32);
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

// Peak resident memory of this process, in MiB.
double peak_rss_mib() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
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
  EXPECT_EQ(r.mesh_sp, 2);
  EXPECT_EQ(r.format_version, kCheckpointFormatVersion);
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

// ---- retention -----------------------------------------------------------------------------------

// Issue 16 (a): keep=2 to step 10, step 10 truncated; a resume from 8 saves 9 with keep=1. The
// corrupt step 10 neither counts toward keep nor stays where auto-resume would look.
TEST_F(Checkpoints, RetentionSetsAsideANewerCorruptCheckpoint) {
  for (const int64_t keep : {1, 2}) {
    SCOPED_TRACE("keep " + std::to_string(keep));
    fs::remove_all(dir_);
    for (int64_t s = 2; s <= 10; s += 2) save_checkpoint(dir_, make_state(s, static_cast<float>(s)), 2);
    ASSERT_EQ(list_checkpoints(dir_), (std::vector<std::string>{checkpoint_path(dir_, 10), checkpoint_path(dir_, 8)}));
    fs::resize_file(checkpoint_path(dir_, 10), fs::file_size(checkpoint_path(dir_, 10)) / 2);
    CheckpointState st;
    ASSERT_EQ(find_latest_valid(dir_, nullptr, &st), checkpoint_path(dir_, 8));
    std::vector<std::string> notes;
    save_checkpoint(dir_, make_state(9, 9.f), keep, &notes);
    std::vector<std::string> want = {checkpoint_path(dir_, 9)};
    if (keep == 2) want.push_back(checkpoint_path(dir_, 8));
    EXPECT_EQ(list_checkpoints(dir_), want);
    const std::string aside = dir_ + "/" + kAbandonedDir + "/step-00000010.h5";
    EXPECT_TRUE(fs::exists(aside));
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find(aside), std::string::npos) << notes[0];
    EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 9));
    EXPECT_EQ(load_checkpoint(checkpoint_path(dir_, 9)).step, 9);
  }
}

// Issue 16 (b): the directory holds 6, 8, 10; a run resumed from a step-4 file saves step 5.
// Step 5 stays, the abandoned future (6, 8, 10) is moved aside intact, and auto-resume continues
// from 5.
TEST_F(Checkpoints, RetentionSetsAsideAnAbandonedFuture) {
  for (const int64_t s : {6, 8, 10}) save_checkpoint(dir_, make_state(s, static_cast<float>(s)), 3);
  save_checkpoint(dir_ + "/elsewhere", make_state(4, 4.f), 3);
  ASSERT_EQ(load_checkpoint(dir_ + "/elsewhere/step-00000004.h5").step, 4);
  std::vector<std::string> notes;
  save_checkpoint(dir_, make_state(5, 5.f), 3, &notes);
  EXPECT_EQ(list_checkpoints(dir_), std::vector<std::string>{checkpoint_path(dir_, 5)});
  EXPECT_EQ(notes.size(), 3u);
  for (const int64_t s : {6, 8, 10}) {
    const std::string aside = checkpoint_path(dir_ + "/" + kAbandonedDir, s);
    ASSERT_TRUE(fs::exists(aside)) << aside;
    EXPECT_EQ(load_checkpoint(aside).step, s);
  }
  EXPECT_EQ(find_latest_valid(dir_), checkpoint_path(dir_, 5));
  // Doing it again (resumed from 4 once more): the step-5 file it replaces is set aside too,
  // under a name not taken yet.
  save_checkpoint(dir_, make_state(5, 5.5f), 3);
  save_checkpoint(dir_, make_state(5, 5.75f), 3);
  EXPECT_EQ(list_checkpoints(dir_), std::vector<std::string>{checkpoint_path(dir_, 5)});
  const std::string aside5 = checkpoint_path(dir_ + "/" + kAbandonedDir, 5);
  EXPECT_EQ(find(load_checkpoint(aside5).params, "embedding").to_vector()[0], 5.f);
  EXPECT_EQ(find(load_checkpoint(aside5 + ".2").params, "embedding").to_vector()[0], 5.5f);
  EXPECT_EQ(find(load_checkpoint(checkpoint_path(dir_, 5)).params, "embedding").to_vector()[0], 5.75f);
  // The same with the step-4 file in the directory: it is older, so it counts toward keep.
  fs::remove_all(dir_);
  for (const int64_t s : {4, 6, 8, 10}) save_checkpoint(dir_, make_state(s, static_cast<float>(s)), 4);
  save_checkpoint(dir_, make_state(5, 5.f), 4);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{checkpoint_path(dir_, 5), checkpoint_path(dir_, 4)}));
}

// An older checkpoint that fails verification counts for nothing: it is moved into corrupt/ and
// the next older verified one is kept in its place.
TEST_F(Checkpoints, RetentionDoesNotCountACorruptOlderCheckpoint) {
  for (const int64_t s : {6, 8}) save_checkpoint(dir_, make_state(s, static_cast<float>(s)), 3);
  const std::string f8 = checkpoint_path(dir_, 8);
  const auto mtime = fs::last_write_time(f8);
  const std::vector<size_t> at = dims_offsets(read_bytes(f8), {16, 8});
  ASSERT_FALSE(at.empty());
  write_u64_at(f8, at[0], 8);  // [16, 8] -> [8, 8]
  fs::last_write_time(f8, mtime + std::chrono::seconds(1));  // as any later write leaves it
  std::vector<std::string> notes;
  save_checkpoint(dir_, make_state(10, 10.f), 2, &notes);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{checkpoint_path(dir_, 10), checkpoint_path(dir_, 6)}));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir_ + "/" + kCorruptDir, 8)));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("does not verify"), std::string::npos) << notes[0];
}

// ---- dataset shapes ----------------------------------------------------------------------------

// Issue 16 (2): a 64-element dataset's dims set to 2^60 or 2^30 (and other wrong sizes): an
// error naming the file and the dataset, found before anything of that size is allocated, and
// auto-resume falls back to the previous checkpoint.
// In format 1 (no metadata checksums) the loader's own checks find it; in format 2 HDF5's
// object header checksum does, first.
TEST_F(Checkpoints, CorruptDimsAreRejectedBeforeAllocating) {
  save_checkpoint(dir_, make_state(8, 8.f, {{"odd", {64}}}), 3);
  const std::string f = checkpoint_path(dir_, 10);
  for (const int64_t version : {1, 2}) {
    if (version == 1) {
      write_format1(f, make_state(10, 10.f, {{"odd", {64}}}));
    } else {
      save_checkpoint(dir_, make_state(10, 10.f, {{"odd", {64}}}), 3);
    }
    const std::string good = read_bytes(f);
    const std::vector<size_t> at = dims_offsets(good, {64});
    ASSERT_EQ(at.size(), 3u);  // /params/odd, /optimizer/m/odd, /optimizer/v/odd
    for (const uint64_t dim : {uint64_t{1} << 60, uint64_t{1} << 30, uint64_t{1} << 40, ~uint64_t{0}, uint64_t{65},
                               uint64_t{63}, uint64_t{0}})
      for (const size_t off : at) {
        SCOPED_TRACE("format " + std::to_string(version) + ", dim " + std::to_string(dim) + " at " +
                     std::to_string(off));
        std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
        write_u64_at(f, off, dim);
        const double rss0 = peak_rss_mib();
        const std::string err = load_error(f);
        EXPECT_LT(peak_rss_mib() - rss0, 256.0) << "a large allocation before the check";
        EXPECT_NE(err.find(f), std::string::npos) << err;
        EXPECT_NE(err.find("/odd"), std::string::npos) << err;
        EXPECT_NE(err.find("corrupt"), std::string::npos) << err;
        std::vector<std::string> warnings;
        EXPECT_EQ(find_latest_valid(dir_, &warnings), checkpoint_path(dir_, 8));
        ASSERT_EQ(warnings.size(), 1u);
        EXPECT_NE(warnings[0].find("/odd"), std::string::npos) << warnings[0];
      }
  }
}

// The same bytes under a permuted shape ([37, 3] -> [3, 37]): in format 2 the object header
// checksum (and the dataset checksum, which covers the shape) catch it; in format 1 the
// comparison with the other datasets of that name.
TEST_F(Checkpoints, PermutedDimsAreDetected) {
  fs::create_directories(dir_);
  const std::string f = checkpoint_path(dir_, 10);
  for (const int64_t version : {1, 2}) {
    if (version == 1) {
      write_format1(f, make_state(10, 1.f, {{"odd", {37, 3}}}));
    } else {
      save_checkpoint(dir_, make_state(10, 1.f, {{"odd", {37, 3}}}), 3);
    }
    const std::vector<size_t> at = dims_offsets(read_bytes(f), {37, 3});
    ASSERT_EQ(at.size(), 3u);
    write_u64_at(f, at[0], 3);
    write_u64_at(f, at[0] + 8, 37);
    const std::string err = load_error(f);
    EXPECT_NE(err.find("/odd"), std::string::npos) << "format " << version << ": " << err;
  }
}

// ---- root attributes ---------------------------------------------------------------------------

// Issue 16 (3): any single bit flipped in a root attribute is an error naming the attribute.
TEST_F(Checkpoints, AttributeBitFlipsAreDetected) {
  save_checkpoint(dir_, make_state(10, 1.f), 3);
  const std::string good = read_bytes(checkpoint_path(dir_, 10));
  const std::string f = dir_ + "/flipped.h5";
  for (const char* name : kIntAttrNames)
    for (const int bit : {0, 1, 7, 31, 40, 62, 63}) {
      std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
      flip_attr_bit(f, ".", name, 0, bit);
      const std::string err = load_error(f);
      EXPECT_NE(err.find(std::string("attribute '") + name + "'"), std::string::npos)
          << name << " bit " << bit << ": " << err;
      EXPECT_NE(err.find(f), std::string::npos) << err;
    }
  // The config text: one character changed.
  std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
  {
    H5Rw file(f);
    const hid_t a = H5Aopen(file.id, "config", H5P_DEFAULT);
    const hid_t type = H5Aget_type(a);
    std::string text(H5Tget_size(type), '\0');
    H5Aread(a, type, text.data());
    text[9] ^= 0x01;  // "model:\n  dim" -> "model:\n  dhm"
    H5Awrite(a, type, text.data());
    H5Tclose(type);
    H5Aclose(a);
  }
  EXPECT_NE(load_error(f).find("attribute 'config'"), std::string::npos) << load_error(f);
  // The checksums themselves.
  for (size_t i = 0; i < std::size(kIntAttrNames) + 2; ++i) {
    std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
    flip_attr_bit(f, ".", "attribute_checksums", i, 17);
    EXPECT_NE(load_error(f).find("attribute_checksums"), std::string::npos) << i << ": " << load_error(f);
  }
  // A dataset's checksum attribute.
  std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
  flip_attr_bit(f, "/params/final_norm", "checksum", 0, 3);
  EXPECT_NE(load_error(f).find("checksum mismatch in dataset /params/final_norm"), std::string::npos) << load_error(f);
}

// Out-of-range values are errors naming the attribute: caught by the attribute checksum in
// format 2, and by the range checks alone in format 1.
TEST_F(Checkpoints, OutOfRangeAttributesAreRejected) {
  const CheckpointState st = make_state(10, 1.f);
  save_checkpoint(dir_, st, 3);
  const std::string good2 = read_bytes(checkpoint_path(dir_, 10));
  const std::string f = dir_ + "/bad.h5";
  write_format1(f, st);
  const std::string good1 = read_bytes(f);
  struct Case {
    const char* attr;
    int64_t value;
    const char* named = nullptr;  // what a format-1 error names, when not `attr`
  };
  const Case cases[] = {{"step", -5},
                        {"step", int64_t{1} << 62},
                        {"step", 11, "adam_step"},  // step - skipped_steps no longer adam_step
                        {"adam_step", 10},
                        {"adam_step", -1},
                        {"skipped_steps", -1},
                        {"skipped_steps", 11},
                        {"data_consumed_samples", 9},
                        {"data_consumed_samples", int64_t{1} << 62},
                        {"data_seed", -3},
                        {"mesh_dp", 0},
                        {"mesh_sp", -2},
                        {"mesh_sp", 3, "/rng/state"},  // 2 * 3 ranks, 4 rng rows
                        {"mesh_ulysses", 3},
                        {"mesh_dp", int64_t{1} << 40},
                        {"format_version", 7}};
  for (const Case& c : cases)
    for (const std::string* good : {&good2, &good1}) {
      const bool v1 = good == &good1;
      SCOPED_TRACE(std::string(c.attr) + " = " + std::to_string(c.value) + (v1 ? " (format 1)" : ""));
      std::ofstream(f, std::ios::binary | std::ios::trunc) << *good;
      set_attr_i64(f, c.attr, c.value);
      const std::string err = load_error(f);
      ASSERT_FALSE(err.empty());
      EXPECT_NE(err.find(f), std::string::npos) << err;
      const std::string named = v1 && c.named ? c.named : std::string("attribute '") + c.attr + "'";
      EXPECT_NE(err.find(named), std::string::npos) << err;
      if (v1 && named.find("attribute") == 0 && std::string(c.attr) != "format_version") {
        EXPECT_NE(err.find("format-1"), std::string::npos) << err;
      }
    }
}

// Files written by format 1 (before attribute checksums) still load, and are still verified.
TEST_F(Checkpoints, Format1FilesStillLoad) {
  const CheckpointState st = make_state(12, 1.5f);
  fs::create_directories(dir_);
  const std::string f = checkpoint_path(dir_, 12);
  write_format1(f, st);
  ASSERT_EQ(get_attr_i64(f, "format_version"), 1);
  const CheckpointState r = load_checkpoint(f);
  EXPECT_EQ(r.format_version, 1);
  EXPECT_EQ(r.step, 12);
  EXPECT_EQ(r.adam_step, 11);
  EXPECT_EQ(r.data_consumed_samples, 96);
  EXPECT_EQ(r.config_yaml, st.config_yaml);
  EXPECT_EQ(r.rng_state, st.rng_state);
  for (const auto& [name, t] : st.params) EXPECT_EQ(find(r.params, name).to_vector(), t.to_vector()) << name;
  EXPECT_EQ(find_latest_valid(dir_), f);
  // Its data checksums still hold: a changed shape is caught by the size checks.
  const std::vector<size_t> at = dims_offsets(read_bytes(f), {8});
  ASSERT_FALSE(at.empty());
  write_u64_at(f, at[0], 7);
  EXPECT_NE(load_error(f).find("stores 32 bytes"), std::string::npos) << load_error(f);
}

}  // namespace
