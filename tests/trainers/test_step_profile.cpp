// StepProfile on the CPU (host clocks): spans go to the phase entered before them, re-entering
// the current phase adds no marker, marks outside start..finish are ignored, and a run with
// logging.profile writes every phase's time per step into metrics.jsonl.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "trainers/config.h"
#include "trainers/step_profile.h"
#include "trainers/train.h"

using namespace lctx;
using namespace lctx::train;

namespace {

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
double at(const std::array<double, kPhases>& ms, Phase p) { return ms[static_cast<int>(p)]; }

TEST(StepProfile, SpansGoToTheEnteredPhase) {
  StepProfile prof(Device::cpu());
  prof.enter(Phase::optimizer);  // before start: ignored
  prof.start(Phase::forward);
  sleep_ms(30);
  prof.enter(Phase::mixer_forward);
  sleep_ms(60);
  prof.enter(Phase::mixer_forward);  // same phase: no new span
  prof.enter(Phase::forward);
  sleep_ms(30);
  prof.enter(Phase::optimizer);
  const auto ms = prof.finish();
  EXPECT_NEAR(at(ms, Phase::forward), 60, 25);
  EXPECT_NEAR(at(ms, Phase::mixer_forward), 60, 25);
  EXPECT_LT(at(ms, Phase::optimizer), 10);
  EXPECT_EQ(at(ms, Phase::backward), 0);
  prof.enter(Phase::backward);  // after finish: ignored
  EXPECT_EQ(prof.finish(), (std::array<double, kPhases>{}));
  // The next step starts from zero with the same markers.
  prof.start(Phase::backward);
  sleep_ms(20);
  EXPECT_NEAR(at(prof.finish(), Phase::backward), 20, 15);
}

TEST(StepProfile, TrainingRecordsEveryPhase) {
  const std::string dir = (std::filesystem::temp_directory_path() / ("lctx_profile_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  const Config c = parse_config(
      "model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n"
      "parallel:\n  sp: 2\n  simulate: 2\n"
      "data:\n  source: passkey\n  seq_len: 32\n  batch_size: 2\n"
      "train:\n  steps: 2\n  threads: 1\neval:\n  batches: 0\ncheckpoint:\n  every: 0\n  save_final: false\n"
      "logging:\n  every: 1\n  progress: false\n  profile: true\n",
      {"logging.out_dir=" + dir});
  RunHooks h;
  h.quiet = true;
  run_training(c, h);
  std::ifstream in(dir + "/metrics.jsonl");
  int records = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"split\": \"train\"") == std::string::npos) continue;
    ++records;
    for (int i = 0; i < kPhases; ++i) {
      const std::string name(phase_name(static_cast<Phase>(i)));
      std::smatch m;
      ASSERT_TRUE(std::regex_search(line, m, std::regex("\"" + name + "\": ([0-9.e+-]+)"))) << name << " in " << line;
      const double ms = std::stod(m[1]);
      EXPECT_GE(ms, 0) << name;
      if (name.find("mixer") == 0 || name == "forward" || name == "backward") {
        EXPECT_GT(ms, 0) << name;
      }
    }
  }
  EXPECT_EQ(records, 2);
  std::filesystem::remove_all(dir);
}

}  // namespace
