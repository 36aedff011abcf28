// Reproductions of the config classes of issue 16 through the real program: a directory or a
// FIFO as the config file, YAML that used to be silently ignored (duplicate keys, repeated
// sections, a second document), a range message that contradicted itself, infinite reals, a
// NUL inside a path, sizes too large for the machine, thread counts libgomp cannot create, and
// an unusable run directory. Each ends with exit 1 and an error naming the key or the file.
#include <sys/stat.h>

#include <fstream>

#include "robustness/program.h"

using namespace lctx::test;

namespace {

class ConfigFiles : public ProgramTest {
 protected:
  std::string write(const std::string& name, const std::string& text) const {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  ProgramResult run(const std::string& yaml, const std::vector<std::string>& sets = {}) const {
    std::vector<std::string> args = {write("c.yaml", std::string(kTinyModel) + yaml), "--out", dir_ + "/run"};
    for (const auto& s : sets) args.insert(args.end(), {"--set", s});
    return run_program(args, 60);
  }
  // Exit 1 with every text of `expect` in the error.
  static void expect_error(const ProgramResult& r, const std::vector<std::string>& expect) {
    EXPECT_TRUE(clean_outcome(r));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    for (const auto& e : expect) EXPECT_NE(r.output.find(e), std::string::npos) << "expected '" << e << "' in " << r.output;
  }
};

TEST_F(ConfigFiles, DirectoryOrFifoAsConfig) {
  expect_error(run_program({dir_}, 20), {dir_, "is a directory"});
  const std::string fifo = dir_ + "/fifo.yaml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error(run_program({fifo}, 20), {fifo, "not a regular file"});
}

TEST_F(ConfigFiles, YamlThatWasIgnored) {
  expect_error(run("optimizer:\n  lr: 0.1\n  lr: 0.2\n"), {"'optimizer.lr' is given twice"});
  expect_error(run("optimizer:\n  lr: 0.1\noptimizer:\n  min_lr: 0.0\n"), {"'optimizer' is given twice"});
  expect_error(run("---\noptimizer:\n  lr: 0.1\n"), {"holds 2 YAML documents"});
  expect_error(run("...\n: [ broken\n"), {"invalid YAML"});
}

TEST_F(ConfigFiles, MessagesAgreeWithLimits) {
  expect_error(run("optimizer:\n  beta2: 1\n"), {"optimizer.beta2 must be a finite number in [0, 0.999999999], got '1'"});
  expect_error(run("mixer:\n  softmax:\n    softmax_scale: .inf\n"), {"mixer.softmax.softmax_scale must be a finite number"});
  expect_error(run("mixer:\n  softmax:\n    softmax_scale: 1e400\n"), {"mixer.softmax.softmax_scale"});
  expect_error(run("", {"data.path=\"/etc/passwd\\0junk\""}), {"data.path must be a string"});
}

TEST_F(ConfigFiles, SizesTooLargeForTheMachine) {
  expect_error(run("", {"data.seq_len=17179869184"}), {"data.seq_len", "available"});
  expect_error(run("", {"parallel.dp=4096", "parallel.simulate=4096", "data.batch_size=4096"}),
               {"parallel.simulate = 4096", "host"});
  expect_error(run("", {"train.threads=4096"}), {"train.threads (4096)"});
}

TEST_F(ConfigFiles, UnusableRunDirectory) {
  write("a_file", "x");
  expect_error(run("", {"logging.out_dir=" + dir_ + "/a_file/run"}), {"logging.out_dir", dir_ + "/a_file/run"});
}

}  // namespace
