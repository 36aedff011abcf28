// Checkpoints as a hostile but fair user leaves them (issue 16), through the real program:
// retention with newer corrupt or abandoned checkpoints in the directory, corrupt dataset dims,
// and root attributes bit-flipped or out of range (file corruption: tests/common/checkpoint_files.h).
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/checkpoint_files.h"
#include "robustness/program.h"
#include "trainers/checkpoint.h"

namespace fs = std::filesystem;


namespace lctx::test {
namespace {

using namespace ckpt;

class CheckpointRepro : public ProgramTest {
 protected:
  void SetUp() override {
    ProgramTest::SetUp();
    std::ofstream(dir_ + "/cfg.yaml") << kTinyModel;
  }
  // lctx-train on the tiny model in <dir>/<run>, with `--set`s and extra arguments.
  ProgramResult train(const std::vector<std::string>& sets, const std::vector<std::string>& extra = {},
                      const std::string& run = "run") const {
    std::vector<std::string> args = {dir_ + "/cfg.yaml", "--out", dir_ + "/" + run};
    for (const auto& s : sets) args.insert(args.end(), {"--set", s});
    args.insert(args.end(), extra.begin(), extra.end());
    return run_program(args, 120);
  }
  std::string ckpt_dir(const std::string& run = "run") const { return dir_ + "/" + run + "/checkpoints"; }
  std::string ckpt(int64_t step, const std::string& run = "run") const {
    return train::checkpoint_path(ckpt_dir(run), step);
  }
  std::vector<std::string> ckpts(const std::vector<int64_t>& steps) const {
    std::vector<std::string> out;
    for (int64_t s : steps) out.push_back(ckpt(s));
    return out;
  }
  static std::string resumed_from(const std::string& f, int64_t step) {
    return "resumed from " + f + " at step " + std::to_string(step);
  }
};

// Issue 16 (1a): keep=2 to step 10, step 10 truncated, then a resume with keep=1 to step 9:
// step 9 is kept, the corrupt step 10 set aside, and the next resume continues from 9.
TEST_F(CheckpointRepro, RetentionWithANewerCorruptCheckpoint) {
  const ProgramResult a = train({"checkpoint.keep=2", "checkpoint.every=2", "train.steps=10"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_EQ(train::list_checkpoints(ckpt_dir()), ckpts({10, 8}));
  fs::resize_file(ckpt(10), fs::file_size(ckpt(10)) / 2);
  const std::vector<std::string> sets = {"checkpoint.keep=1", "checkpoint.every=3", "train.steps=9"};
  const ProgramResult b = train(sets, {"--resume"});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("skipping checkpoint " + ckpt(10)), std::string::npos) << b.output;
  EXPECT_NE(b.output.find(resumed_from(ckpt(8), 8)), std::string::npos) << b.output;
  EXPECT_EQ(train::list_checkpoints(ckpt_dir()), ckpts({9}));
  EXPECT_TRUE(fs::exists(ckpt_dir() + "/" + train::kAbandonedDir + "/step-00000010.h5"));
  const ProgramResult c = train(sets, {"--resume"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find(resumed_from(ckpt(9), 9)), std::string::npos) << c.output;
  // And it continues from there.
  const ProgramResult d = train({"checkpoint.keep=2", "train.steps=11"}, {"--resume"});
  ASSERT_EQ(d.exit_code, 0) << d.output;
  EXPECT_NE(d.output.find(resumed_from(ckpt(9), 9)), std::string::npos) << d.output;
  EXPECT_EQ(train::list_checkpoints(ckpt_dir()), ckpts({11, 9}));
}

// Issue 16 (1b): the directory holds 6, 8, 10; a resume from a step-4 file to step 5 keeps step
// 5, moves the abandoned future aside, and the next auto-resume continues from 5, not 10.
TEST_F(CheckpointRepro, RetentionWithAnAbandonedFuture) {
  const ProgramResult a = train({"checkpoint.keep=3", "checkpoint.every=2", "train.steps=10"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_EQ(train::list_checkpoints(ckpt_dir()), ckpts({10, 8, 6}));
  const ProgramResult other = train({"train.steps=4"}, {}, "other");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  const ProgramResult b = train({"checkpoint.keep=3", "train.steps=5"}, {"--resume=" + ckpt(4, "other")});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find(resumed_from(ckpt(4, "other"), 4)), std::string::npos) << b.output;
  EXPECT_EQ(train::list_checkpoints(ckpt_dir()), ckpts({5}));
  for (const int64_t s : {6, 8, 10}) {
    const std::string aside = train::checkpoint_path(ckpt_dir() + "/" + train::kAbandonedDir, s);
    ASSERT_TRUE(fs::exists(aside)) << b.output;
    EXPECT_EQ(train::load_checkpoint(aside).step, s);
  }
  const ProgramResult c = train({"train.steps=5"}, {"--resume"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find(resumed_from(ckpt(5), 5)), std::string::npos) << c.output;
}

// Issue 16 (2): a dataset's dims set to 2^60 or 2^30: an explicit resume is an error naming
// the file and the dataset; auto-resume falls back to the previous checkpoint with a warning.
// In a format-1 file (no metadata checksums) the loader's size checks find it before
// allocating; in format 2 HDF5's object header checksum does.
TEST_F(CheckpointRepro, CorruptDatasetDims) {
  const ProgramResult a = train({"checkpoint.every=2", "train.steps=4"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const train::CheckpointState st = train::load_checkpoint(ckpt(4));
  const std::string good2 = read_bytes(ckpt(4));
  write_format1(ckpt(4), st);
  const std::string good1 = read_bytes(ckpt(4));
  const Tensor& t = st.params.back().second;
  const std::vector<uint64_t> dims(t.shape().begin(), t.shape().end());
  for (const std::string* good : {&good1, &good2}) {
    const std::vector<size_t> at = dims_offsets(*good, dims);
    ASSERT_FALSE(at.empty());
    for (const uint64_t dim : {uint64_t{1} << 60, uint64_t{1} << 30}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + (good == &good1 ? " (format 1)" : ""));
      write_bytes(ckpt(4), *good);
      write_u64_at(ckpt(4), at[0], dim);
      const ProgramResult e = train({"train.steps=4"}, {"--resume=" + ckpt(4)});
      EXPECT_TRUE(clean_outcome(e, {ckpt(4)}));
      EXPECT_EQ(e.exit_code, 1);
      EXPECT_NE(e.output.find("dataset /"), std::string::npos) << e.output;
      const ProgramResult r = train({"train.steps=4", "checkpoint.save_final=false"}, {"--resume"});
      EXPECT_EQ(r.exit_code, 0) << r.output;
      EXPECT_NE(r.output.find("skipping checkpoint " + ckpt(4)), std::string::npos) << r.output;
      EXPECT_NE(r.output.find(resumed_from(ckpt(2), 2)), std::string::npos) << r.output;
    }
  }
}

// Issue 16 (3): a bit flipped in a root attribute, and out-of-range steps.
TEST_F(CheckpointRepro, CorruptRootAttributes) {
  const ProgramResult a = train({"checkpoint.every=2", "train.steps=4"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string good = read_bytes(ckpt(4));
  for (const char* name : {"step", "adam_step", "data_consumed_samples", "skipped_steps", "mesh_dp", "mesh_sp"}) {
    SCOPED_TRACE(name);
    write_bytes(ckpt(4), good);
    ASSERT_TRUE(set_root_attr(ckpt(4), name, get_attr_i64(ckpt(4), name) ^ 2));
    const ProgramResult e = train({"train.steps=4"}, {"--resume=" + ckpt(4)});
    EXPECT_TRUE(clean_outcome(e, {ckpt(4)}));
    EXPECT_NE(e.output.find(std::string("attribute '") + name + "'"), std::string::npos) << e.output;
    const ProgramResult r = train({"train.steps=4", "checkpoint.save_final=false"}, {"--resume"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(resumed_from(ckpt(2), 2)), std::string::npos) << r.output;
  }
  // step = -5 and 2^62, in a format-2 file (the checksum) and in a format-1 one (the ranges).
  write_bytes(ckpt(4), good);
  write_format1(ckpt(4), train::load_checkpoint(ckpt(4)));
  const std::string v1 = read_bytes(ckpt(4));
  for (const std::string* bytes : {&good, &v1})
    for (const int64_t step : {int64_t{-5}, int64_t{1} << 62}) {
      SCOPED_TRACE("step " + std::to_string(step) + (bytes == &v1 ? " (format 1)" : ""));
      write_bytes(ckpt(4), *bytes);
      ASSERT_TRUE(set_root_attr(ckpt(4), "step", step));
      const ProgramResult e = train({"train.steps=4"}, {"--resume=" + ckpt(4)});
      EXPECT_TRUE(clean_outcome(e, {ckpt(4)}));
      EXPECT_EQ(e.exit_code, 1);
      EXPECT_NE(e.output.find("attribute 'step'"), std::string::npos) << e.output;
    }
  // A format-1 file still resumes, with a note that its attributes carry no checksum.
  write_bytes(ckpt(4), v1);
  const ProgramResult r = train({"train.steps=5"}, {"--resume=" + ckpt(4)});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("is format 1: its root attributes carry no checksum"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(resumed_from(ckpt(4), 4)), std::string::npos) << r.output;
}

// A checkpoint beyond train.steps is an error naming the file, not a silent exit 0.
TEST_F(CheckpointRepro, CheckpointBeyondTrainSteps) {
  const ProgramResult a = train({"train.steps=4"});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  for (const char* resume : {"--resume", "--resume=auto"}) {
    const ProgramResult e = train({"train.steps=3"}, {resume});
    EXPECT_TRUE(clean_outcome(e, {ckpt(4)}));
    EXPECT_EQ(e.exit_code, 1);
    EXPECT_NE(e.output.find("beyond train.steps = 3"), std::string::npos) << e.output;
  }
  const ProgramResult same = train({"train.steps=4"}, {"--resume"});
  EXPECT_EQ(same.exit_code, 0) << same.output;
}

}  // namespace
}  // namespace lctx::test
