// Data files as a hostile but fair user hands them to lctx-train (issue 16), one reproduction
// per class through the real program:
//   - a data file truncated while training (text, tokens, hdf5): exit 1 with an error naming the
//     file and both sizes, after a checkpoint of the last good step that loads and resumes once
//     the file is restored (it was SIGBUS for the memory-mapped sources, zeros for HDF5);
//   - a FIFO, directory, device or socket as data.path: a prompt error naming it (a FIFO hung
//     in open());
//   - an eval split too short and an id outside the vocabulary: errors before the first step
//     naming the keys, the file and the position (they came at the first eval / at step 120).
#include <hdf5.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/data_files.h"
#include "robustness/program.h"
#include "trainers/checkpoint.h"

namespace lctx::test {
namespace {

namespace fs = std::filesystem;

class DataFileRuns : public ProgramTest {
 protected:
  void SetUp() override {
    ProgramTest::SetUp();
    config_ = dir_ + "/tiny.yaml";
    std::ofstream(config_) << kTinyModel;
  }

  // Writes `ids` as data.source `source` ("text": bytes, "tokens": uint16, "hdf5": dataset
  // "tokens") and returns the file's path.
  std::string write_data(const std::string& source, const std::vector<int32_t>& ids) const {
    const std::string path = dir_ + "/data." + source;
    if (source == "hdf5") {
      write_hdf5_ids(path, "tokens", ids, H5T_STD_U16LE);
      return path;
    }
    std::ofstream f(path, std::ios::binary);
    for (int32_t v : ids) {
      if (source == "text") {
        f.put(static_cast<char>(v));
      } else {
        const uint16_t w = static_cast<uint16_t>(v);
        f.write(reinterpret_cast<const char*>(&w), 2);
      }
    }
    return path;
  }

  // lctx-train on the tiny model, reading `path` as `source`, into <dir>/run.
  std::vector<std::string> args(const std::string& source, const std::string& path, int64_t steps,
                                std::vector<std::string> extra = {}) const {
    std::vector<std::string> a = {config_,  "--out", run_dir(), "--set", "data.source=" + source, "--set",
                                  "data.path=" + path, "--set", "train.steps=" + std::to_string(steps)};
    for (auto& e : extra) a.insert(a.end(), {"--set", e});
    return a;
  }
  std::string run_dir() const { return dir_ + "/run"; }

  std::string config_;
};

// 50k ids below 256 (every source can hold them).
std::vector<int32_t> ids(int64_t n = 50000) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 7919 + i / 3) % 256);
  return v;
}

// Waits (up to 10 s) until the run's metrics.jsonl records train step `step`.
void wait_for_step(const std::string& run_dir, int64_t step) {
  const std::string mark = "\"step\": " + std::to_string(step) + ",";
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    std::ifstream f(run_dir + "/metrics.jsonl");
    std::stringstream s;
    s << f.rdbuf();
    if (s.str().find(mark) != std::string::npos) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Truncated after step 3 of a run too long to end first: exit 1 naming the file, after saving
// the last good step; the checkpoint loads, and resumes once the file is back.
TEST_F(DataFileRuns, FileTruncatedWhileTrainingSavesThenFailsNamingIt) {
  for (const std::string source : {"text", "tokens", "hdf5"}) {
    SCOPED_TRACE(source);
    fs::remove_all(run_dir());
    const std::string path = write_data(source, ids());
    const std::string saved = dir_ + "/saved";
    fs::copy_file(path, saved, fs::copy_options::overwrite_existing);
    const ProgramResult r = run_program(args(source, path, 20000), 20, [&](pid_t) {
      wait_for_step(run_dir(), 3);
      fs::resize_file(path, 1000);
    });
    EXPECT_TRUE(clean_outcome(r, {path}));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    const std::string shrank = "shrank from " + std::to_string(fs::file_size(saved)) + " to 1000 bytes";
    EXPECT_NE(r.output.find(shrank), std::string::npos) << r.output;
    const auto ckpts = train::list_checkpoints(run_dir() + "/checkpoints");
    ASSERT_EQ(ckpts.size(), 1u) << r.output;
    const train::CheckpointState st = train::load_checkpoint(ckpts[0]);
    EXPECT_GE(st.step, 3);
    EXPECT_NE(r.output.find("saved a checkpoint of step " + std::to_string(st.step)), std::string::npos) << r.output;

    fs::copy_file(saved, path, fs::copy_options::overwrite_existing);
    std::vector<std::string> resume = args(source, path, st.step + 2);
    resume.push_back("--resume");
    const ProgramResult again = run_program(resume, 20);
    EXPECT_EQ(again.exit_code, 0) << again.output;
    EXPECT_NE(again.output.find("resumed from " + ckpts[0]), std::string::npos) << again.output;
  }
}

// Not a regular file: refused at once (a FIFO's open() used to wait for a writer forever).
TEST_F(DataFileRuns, NonRegularDataPathFailsPromptly) {
  const std::string fifo = dir_ + "/fifo", sock = dir_ + "/sock";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  struct Case {
    std::string path, kind, source;
  };
  for (const Case& c : {Case{fifo, "a FIFO", "text"}, Case{fifo, "a FIFO", "tokens"}, Case{fifo, "a FIFO", "hdf5"},
                        Case{dir_, "a directory", "tokens"}, Case{"/dev/zero", "a character device", "text"},
                        Case{sock, "a socket", "hdf5"}}) {
    SCOPED_TRACE(c.path + " as " + c.source);
    const ProgramResult r = run_program(args(c.source, c.path, 200), 20);
    EXPECT_TRUE(clean_outcome(r, {c.path}));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("data.path '" + c.path + "' is " + c.kind), std::string::npos) << r.output;
  }
  ::close(s);
}

// An eval split too short (data.holdout: 0) fails before the first step, naming the keys.
TEST_F(DataFileRuns, EvalSplitTooShortFailsBeforeTraining) {
  const std::string path = write_data("tokens", ids());
  const ProgramResult r = run_program(args("tokens", path, 200, {"data.holdout=0"}), 20);
  EXPECT_TRUE(clean_outcome(r, {path}));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  for (const char* key : {"data.holdout = 0", "eval.batches = 1", "data.seq_len + 1 = 65", "eval split of"})
    EXPECT_NE(r.output.find(key), std::string::npos) << key << " in " << r.output;
  EXPECT_FALSE(fs::exists(run_dir() + "/metrics.jsonl")) << "no step may run";
}

// One id outside model.vocab_size in a 100k-token file fails before the first step, naming the
// file, the position and the id.
TEST_F(DataFileRuns, OutOfVocabularyIdFailsBeforeTraining) {
  std::vector<int32_t> v = ids(100000);
  v[51234] = 300;
  const std::string path = write_data("tokens", v);
  const ProgramResult r = run_program(args("tokens", path, 2000), 20);
  EXPECT_TRUE(clean_outcome(r, {path}));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("token id 300 at position 51234 of " + path), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(run_dir() + "/metrics.jsonl")) << "no step may run";
}

}  // namespace
}  // namespace lctx::test
