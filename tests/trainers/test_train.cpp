// The training loop end to end on tiny models with simulated ranks: bit-exact resume, resume
// on a different dp/sp layout, a signal stopping every rank cleanly with a checkpoint, NaN
// steps skipped, corrupt checkpoints, mismatched model shapes, the metrics JSONL schema, and
// evaluation at another length (eval.seq_len).
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/train.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

class Training : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("lctx_train_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A tiny ring model over 4 simulated ranks (dp 1 x sp 4) learning passkey retrieval.
  Config config(const std::string& run, std::vector<std::string> extra = {}) const {
    std::vector<std::string> o = {"logging.out_dir=" + dir_ + "/" + run};
    o.insert(o.end(), extra.begin(), extra.end());
    return parse_config(
        "model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n"
        "parallel:\n  dp: 1\n  sp: 4\n  simulate: 4\n"
        "data:\n  source: passkey\n  seq_len: 32\n  batch_size: 4\n"
        "optimizer:\n  lr: 1.0e-2\n  warmup_steps: 2\n"
        "train:\n  steps: 6\n  threads: 1\n"
        "eval:\n  every: 3\n  batches: 1\n"
        "checkpoint:\n  every: 0\n  keep: 5\n"
        "logging:\n  every: 1\n  progress: false\n",
        o);
  }

  static RunResult run(const Config& c, std::function<void(int64_t)> after = {}) {
    RunHooks h;
    h.quiet = true;
    h.after_step = std::move(after);
    return run_training(c, h);
  }

  // Runs 6 steps with a checkpoint at 3, then a new instance resumed from it: steps 4..6 and
  // the final parameters and optimizer state must be bitwise those of the uninterrupted run.
  void expect_exact_resume(const std::vector<std::string>& extra) {
    std::vector<std::string> a = extra, b = extra;
    a.push_back("checkpoint.every=3");
    const RunResult full = run(config("a", a));
    ASSERT_EQ(full.train.size(), 6u);
    const std::string ckpt = dir_ + "/a/checkpoints/step-00000003.h5";
    ASSERT_TRUE(fs::exists(ckpt));
    b.push_back("checkpoint.resume=" + ckpt);
    const RunResult resumed = run(config("b", b));
    EXPECT_EQ(resumed.start_step, 3);
    EXPECT_EQ(resumed.resumed_from, ckpt);
    ASSERT_EQ(resumed.train.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(resumed.train[i].step, full.train[3 + i].step);
      EXPECT_EQ(resumed.train[i].loss, full.train[3 + i].loss) << "step " << resumed.train[i].step;
      EXPECT_EQ(resumed.train[i].grad_norm, full.train[3 + i].grad_norm);
    }
    const CheckpointState ca = load_checkpoint(dir_ + "/a/checkpoints/step-00000006.h5");
    const CheckpointState cb = load_checkpoint(dir_ + "/b/checkpoints/step-00000006.h5");
    ASSERT_EQ(ca.params.size(), cb.params.size());
    for (size_t i = 0; i < ca.params.size(); ++i) {
      EXPECT_EQ(ca.params[i].second.to_vector(), cb.params[i].second.to_vector()) << ca.params[i].first;
      EXPECT_EQ(ca.adam_v[i].second.to_vector(), cb.adam_v[i].second.to_vector()) << ca.params[i].first;
    }
    EXPECT_EQ(ca.data_consumed_samples, cb.data_consumed_samples);
  }

  std::string dir_;
};

std::vector<double> losses(const RunResult& r) {
  std::vector<double> l;
  for (const auto& s : r.train) l.push_back(s.loss);
  return l;
}

TEST_F(Training, ExactResumeIsBitwise) { expect_exact_resume({}); }

std::vector<double> eval_losses(const RunResult& r) {
  std::vector<double> l;
  for (const auto& s : r.eval) l.push_back(s.loss);
  return l;
}

// eval.seq_len: evaluating at 2x the training length is bitwise the evaluation of a run whose
// data.seq_len is that length when the weights are the same (lr 0: the initial ones), it sees
// the trained weights otherwise, and it leaves training untouched.
TEST_F(Training, EvalAtAnotherLength) {
  const std::vector<std::string> frozen = {"optimizer.lr=0", "optimizer.min_lr=0"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const RunResult at64 = run(config("a", with(frozen, {"data.seq_len=64"})));
  const RunResult longer = run(config("b", with(frozen, {"eval.seq_len=64"})));
  ASSERT_EQ(longer.eval.size(), 2u);
  EXPECT_EQ(eval_losses(longer), eval_losses(at64));
  const RunResult trained = run(config("c", {"eval.seq_len=64"}));
  const RunResult plain = run(config("d"));
  EXPECT_EQ(losses(trained), losses(plain));
  ASSERT_EQ(trained.eval.size(), 2u);
  EXPECT_NE(trained.eval[1].loss, longer.eval[1].loss);  // the weights moved
  EXPECT_NE(trained.eval[1].loss, plain.eval[1].loss);   // another length
  // A kind whose parameters are shaped by data.seq_len cannot, and the length must suit the layout.
  EXPECT_THROW(config("e", {"model.mixers=linformer", "mixer.linformer.bidirectional=true", "eval.seq_len=64"}), Error);
  try {
    config("f", {"eval.seq_len=36"});
    ADD_FAILURE() << "eval.seq_len 36 accepted with zigzag over 4 ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("eval.seq_len = 36"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("divisible by 2 * parallel.sp = 8"), std::string::npos) << e.what();
  }
}

// Performer features redrawn every 2 steps (at 2, 4, 6): the resumed run draws the same ones.
TEST_F(Training, ExactResumeRedrawsPerformerFeatures) {
  const std::vector<std::string> performer = {"model.mixers=performer", "mixer.performer.features=8"};
  std::vector<std::string> redraw = performer;
  redraw.push_back("mixer.performer.redraw_every=2");
  expect_exact_resume(redraw);
  // The redraws happen: steps 1-2 (draw 0) match a run that never redraws, step 3 (draw 1) not.
  const RunResult once = run(config("c", performer));
  const RunResult full = run(config("d", redraw));
  EXPECT_EQ(full.train[0].loss, once.train[0].loss);
  EXPECT_EQ(full.train[1].loss, once.train[1].loss);
  EXPECT_NE(full.train[2].loss, once.train[2].loss);
}

TEST_F(Training, ResumeOnOtherLayouts) {
  const RunResult full = run(config("a", {"checkpoint.every=3"}));
  const std::string ckpt = dir_ + "/a/checkpoints/step-00000003.h5";
  const std::vector<std::vector<std::string>> layouts = {
      {"parallel.dp=2", "parallel.sp=2"},                                           // ring of 2, dp 2
      {"parallel.sp=1", "parallel.simulate=1", "mixer.softmax.sp=auto"},              // one rank
      {"parallel.sp=4", "parallel.ulysses=2", "mixer.softmax.sp=hybrid"},              // ulysses x ring
  };
  for (size_t li = 0; li < layouts.size(); ++li) {
    const auto& l = layouts[li];
    std::vector<std::string> o = l;
    o.push_back("checkpoint.resume=" + ckpt);
    const RunResult r = run(config(std::string("layout") + std::to_string(li), o));
    ASSERT_EQ(r.train.size(), 3u) << l[0];
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(r.train[i].loss, full.train[3 + i].loss, 1e-5 * full.train[3 + i].loss)
          << l[0] << " " << l[1] << " step " << r.train[i].step;
  }
}

TEST_F(Training, SignalStopsAllRanksWithACheckpoint) {
  install_signal_handlers();
  const RunResult full = run(config("a"));
  const RunResult stopped = run(config("b"), [](int64_t step) {
    if (step == 2) std::raise(SIGUSR1);
  });
  EXPECT_TRUE(stopped.stopped_by_signal);
  EXPECT_EQ(stopped.final_step, 2);
  ASSERT_TRUE(fs::exists(dir_ + "/b/checkpoints/step-00000002.h5"));
  // Resuming (auto) finishes the run with the same losses as the uninterrupted one.
  const RunResult rest = run(config("b", {"checkpoint.resume=auto"}));
  EXPECT_EQ(rest.start_step, 2);
  std::vector<double> joined = losses(stopped);
  for (double x : losses(rest)) joined.push_back(x);
  EXPECT_EQ(joined, losses(full));
}

TEST_F(Training, NonFiniteGradientSkipsTheStep) {
  ::setenv(kInjectNanEnv, "3", 1);
  const RunResult r = run(config("a"));
  ::unsetenv(kInjectNanEnv);
  ASSERT_EQ(r.train.size(), 6u);
  EXPECT_TRUE(r.train[2].skipped);
  EXPECT_EQ(r.skipped_steps, 1);
  for (const auto& s : r.train) EXPECT_TRUE(std::isfinite(s.loss));
  std::ifstream in(dir_ + "/a/metrics.jsonl");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(all.find("\"step\": 3, \"loss\""), std::string::npos);
  EXPECT_NE(all.find("\"skipped\": true"), std::string::npos);
  // The parameters are those of a run where step 3 did nothing: the step-4 loss differs from
  // the clean run's, but the checkpoint is finite.
  const CheckpointState st = load_checkpoint(dir_ + "/a/checkpoints/step-00000006.h5");
  EXPECT_EQ(st.skipped_steps, 1);
  EXPECT_EQ(st.adam_step, 5);
  for (const auto& [n, t] : st.params)
    for (double v : t.to_vector()) ASSERT_TRUE(std::isfinite(v)) << n;
}

TEST_F(Training, CorruptCheckpoints) {
  run(config("a", {"checkpoint.every=2"}));
  const std::string newest = dir_ + "/a/checkpoints/step-00000006.h5";
  fs::resize_file(newest, fs::file_size(newest) / 3);
  // Explicitly requested: a clear error.
  try {
    run(config("a", {"checkpoint.resume=" + newest}));
    ADD_FAILURE() << "a truncated checkpoint was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step-00000006.h5"), std::string::npos) << e.what();
  }
  // auto: skipped, the previous one (step 4) is used.
  const RunResult r = run(config("a", {"checkpoint.resume=auto"}));
  EXPECT_EQ(r.start_step, 4);
}

TEST_F(Training, ModelShapeMismatchIsAnError) {
  run(config("a"));
  try {
    run(config("a", {"checkpoint.resume=auto", "model.dim=32"}));
    ADD_FAILURE() << "resumed a dim-16 checkpoint with dim 32";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model-shaping key model.dim is 16 in the checkpoint but 32"), std::string::npos)
        << e.what();
  }
  // Non-shaping keys may change (here: the learning rate and the number of steps).
  const RunResult r = run(config("a", {"checkpoint.resume=auto", "optimizer.lr=0.001", "train.steps=7"}));
  EXPECT_EQ(r.start_step, 6);
  EXPECT_EQ(r.train.size(), 1u);
}

TEST_F(Training, MetricsJsonlSchema) {
  run(config("a"));
  std::ifstream in(dir_ + "/a/metrics.jsonl");
  ASSERT_TRUE(in.good());
  const std::vector<std::string> train_keys = {"split", "step", "loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "mfu",
                                               "tokens", "skipped", "skipped_total", "mem_peak_bytes", "sp_bytes"};
  const std::vector<std::string> eval_keys = {"split", "step", "loss", "accuracy", "tokens"};
  int train = 0, eval = 0;
  int64_t last_step = 0;
  for (std::string line; std::getline(in, line);) {
    ASSERT_EQ(line.front(), '{');
    ASSERT_EQ(line.back(), '}');
    const bool is_eval = line.find("\"split\": \"eval\"") != std::string::npos;
    (is_eval ? eval : train)++;
    for (const auto& k : is_eval ? eval_keys : train_keys)
      EXPECT_NE(line.find("\"" + k + "\": "), std::string::npos) << k << " missing in " << line;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(line, m, std::regex(R"("step": (\d+))")));
    if (!is_eval) {
      EXPECT_EQ(std::stoll(m[1]), last_step + 1);
      last_step = std::stoll(m[1]);
    }
    ASSERT_TRUE(std::regex_search(line, m, std::regex(R"("accuracy": ([0-9.eE+-]+))")));
    EXPECT_GE(std::stod(m[1]), 0.0);
    EXPECT_LE(std::stod(m[1]), 1.0);
  }
  EXPECT_EQ(train, 6);
  EXPECT_EQ(eval, 2);  // steps 3 and 6
  EXPECT_TRUE(fs::exists(dir_ + "/a/config.yaml"));
  EXPECT_NO_THROW(load_config(dir_ + "/a/config.yaml"));
}

// sp_bytes: the sequence-parallel traffic of a training step; a ring passes the same blocks
// in every layer and every step (evaluations between steps not counted), and none on 1 rank.
TEST_F(Training, SpBytesPerStep) {
  const auto sp_bytes = [&](const std::string& run) {
    std::ifstream in(dir_ + "/" + run + "/metrics.jsonl");
    std::vector<double> v;
    std::smatch m;
    for (std::string line; std::getline(in, line);)
      if (line.find("\"split\": \"train\"") != std::string::npos &&
          std::regex_search(line, m, std::regex(R"("sp_bytes": ([0-9.eE+-]+))")))
        v.push_back(std::stod(m[1]));
    return v;
  };
  run(config("a"));
  run(config("b", {"model.n_layers=4"}));
  run(config("c", {"parallel.sp=1", "parallel.simulate=1"}));
  run(config("d", {"parallel.sp=1", "parallel.simulate=1", "model.mixers=mamba"}));  // a state scan of 1 rank
  const std::vector<double> a = sp_bytes("a"), b = sp_bytes("b"), c = sp_bytes("c"), d = sp_bytes("d");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  ASSERT_EQ(c.size(), 6u);
  ASSERT_EQ(d.size(), 6u);
  EXPECT_GT(a[0], 0.0);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i], a[0]) << "step " << i + 1;
    EXPECT_EQ(b[i], 2 * a[0]) << "step " << i + 1;
    EXPECT_EQ(c[i], 0.0) << "step " << i + 1;
    EXPECT_EQ(d[i], 0.0) << "step " << i + 1;
  }
}

TEST(LearningRate, WarmupThenCosine) {
  Config c = parse_config("optimizer:\n  lr: 1.0\n  min_lr: 0.1\n  warmup_steps: 4\ntrain:\n  steps: 14\n");
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(c, 3), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 4), 1.0);
  EXPECT_NEAR(learning_rate(c, 13), 0.1, 1e-12);
  for (int64_t s = 5; s < 14; ++s) EXPECT_LT(learning_rate(c, s), learning_rate(c, s - 1));
}

// optimizer.decay_steps: the schedule of a run that long, cut at train.steps (or held at min_lr
// past it).
TEST(LearningRate, DecayStepsSetTheCosineLength) {
  const Config full = parse_config("optimizer:\n  lr: 1.0\n  min_lr: 0.1\n  warmup_steps: 4\ntrain:\n  steps: 24\n");
  const Config cut = parse_config(
      "optimizer:\n  lr: 1.0\n  min_lr: 0.1\n  warmup_steps: 4\n  decay_steps: 24\ntrain:\n  steps: 14\n");
  const Config past = parse_config(
      "optimizer:\n  lr: 1.0\n  min_lr: 0.1\n  warmup_steps: 4\n  decay_steps: 24\ntrain:\n  steps: 40\n");
  for (int64_t s = 0; s < 24; ++s) {
    EXPECT_DOUBLE_EQ(learning_rate(cut, s), learning_rate(full, s)) << "step " << s;
    EXPECT_DOUBLE_EQ(learning_rate(past, s), learning_rate(full, s)) << "step " << s;
  }
  EXPECT_GT(learning_rate(cut, 13), 0.5);
  EXPECT_NEAR(learning_rate(past, 39), 0.1, 1e-12);
}

}  // namespace
