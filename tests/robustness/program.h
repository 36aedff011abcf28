// The robustness suite's view of lctx-train: the program run as a user runs it (a child process,
// its output captured, killed after a time limit), and the suite's one oracle: a run ends with
// exit 0, or with exit 1 and an "lctx-train: error:" message that names a config key or a file,
// and never by a signal, a hang or a raw exception text (std::bad_alloc, basic_string, ...).
#pragma once
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "trainers/config.h"

namespace lctx::test {

struct ProgramResult {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  bool timed_out = false;
  std::string output;  // stdout and stderr, interleaved
};

// Runs lctx-train with `args`; after timeout_s it is sent SIGKILL and reported as timed out.
// `after_start`, when set, is called once the child runs (to change its files under it).
inline ProgramResult run_program(const std::vector<std::string>& args, double timeout_s = 60,
                                 const std::function<void(pid_t)>& after_start = {}) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv = {const_cast<char*>(LCTX_TRAIN_EXE)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(LCTX_TRAIN_EXE, argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  if (after_start) after_start(pid);
  ProgramResult r;
  const auto t0 = std::chrono::steady_clock::now();
  char buf[4096];
  for (;;) {
    const double left = timeout_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (left <= 0) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
    if (ready <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;  // the child closed its output: it is ending
    r.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

// Texts that only a raw, unexplained failure prints.
inline const std::vector<std::string>& raw_failure_texts() {
  static const std::vector<std::string> t = {"std::",       "bad_alloc", "basic_string", "terminate called",
                                             "what():",     "vector::",  "Segmentation", "Aborted",
                                             "stoll",       "stod",      "map::at",      "bad_variant"};
  return t;
}

// The oracle. `names`: the keys or file paths an error may name (empty: any config key or any
// path); an error must name one of them.
inline ::testing::AssertionResult clean_outcome(const ProgramResult& r, std::vector<std::string> names = {}) {
  if (r.timed_out) return ::testing::AssertionFailure() << "hang (killed after the time limit); output:\n" << r.output;
  if (r.signal) return ::testing::AssertionFailure() << "ended by signal " << r.signal << "; output:\n" << r.output;
  if (r.exit_code == 0) return ::testing::AssertionSuccess();
  const size_t at = r.output.find("lctx-train: error:");
  if (r.exit_code != 1 || at == std::string::npos)
    return ::testing::AssertionFailure() << "exit " << r.exit_code << " without an lctx-train error; output:\n" << r.output;
  const std::string msg = r.output.substr(at);
  for (const std::string& t : raw_failure_texts())
    if (msg.find(t) != std::string::npos)
      return ::testing::AssertionFailure() << "raw failure text '" << t << "' in: " << msg;
  if (names.empty()) {
    names = train::option_paths();
    names.push_back("/");  // a file path
  }
  for (const std::string& n : names)
    if (msg.find(n) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "the error names none of the expected keys or files: " << msg;
}

// A scratch directory per test, removed afterwards.
class ProgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("lctx_robust_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

// A tiny CPU model that trains in a second: extra YAML lines are appended (later keys win
// through --set, not here: keep sections unique).
inline const char* kTinyModel =
    "model:\n  vocab_size: 256\n  dim: 16\n  n_layers: 1\n  n_heads: 2\n"
    "data:\n  seq_len: 64\n  batch_size: 2\n"
    "train:\n  steps: 4\n  threads: 1\n  device: cpu\n"
    "eval:\n  batches: 1\n"
    "logging:\n  every: 1\n  progress: false\n";

}  // namespace lctx::test
