// The training loop of lctx-train: sets up the ranks (simulated threads, MPI processes or one
// process), the model, data and optimizer, resumes from a checkpoint, and runs the steps:
//   batch -> forward/backward -> gradient all-reduce over all ranks -> NaN/Inf check (the step
//   is skipped and reported) -> clip -> AdamW (warmup + cosine) -> metrics, eval, checkpoints.
// A SIGTERM or SIGUSR1 sets a flag that every rank agrees on at the next step boundary
// (all-reduce max); then every rank takes part in a final checkpoint and returns cleanly.
// Rank 0 prints the progress line and writes <out_dir>/metrics.jsonl (one JSON object per
// record: {"split": "train"|"eval", "step", "loss", "accuracy", ...}) and <out_dir>/config.yaml.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainers/config.h"

namespace lctx::train {

struct StepRecord {
  int64_t step = 0;  // steps completed after this record's step
  double loss = 0;
  double accuracy = 0;
  double grad_norm = 0;
  double lr = 0;
  bool skipped = false;  // non-finite gradients: no update
};

struct RunResult {
  std::vector<StepRecord> train;  // every step run by this invocation (rank 0)
  std::vector<StepRecord> eval;   // every evaluation
  int64_t start_step = 0;         // > 0 after a resume
  int64_t final_step = 0;
  int64_t skipped_steps = 0;
  bool stopped_by_signal = false;
  std::string resumed_from;     // checkpoint file, or empty
  std::string last_checkpoint;  // written by this run, or empty
  double wall_s = 0;
};

struct RunHooks {
  // Called on rank 0 after every step with the number of steps completed (tests use it to
  // raise a signal at a chosen step).
  std::function<void(int64_t)> after_step;
  bool quiet = false;  // no progress lines (tests)
};

// Runs a whole training job as configured. Throws lctx::Error on failure.
RunResult run_training(const Config& cfg, const RunHooks& hooks = {});

// SIGTERM / SIGUSR1 handlers that request a clean stop (checkpoint, then exit).
void install_signal_handlers();
// What the handlers do: request a stop at the next step boundary.
void request_stop(int signal);

// Learning rate at step `step` (0-based): linear warmup to optimizer.lr, cosine to min_lr at
// optimizer.decay_steps (train.steps when 0), min_lr after.
double learning_rate(const Config& cfg, int64_t step);

// Test hook: LCTX_INJECT_NAN_STEP=<n> puts a NaN into rank 0's gradients at step n (1-based).
constexpr const char* kInjectNanEnv = "LCTX_INJECT_NAN_STEP";

}  // namespace lctx::train
