// MetricsLog: what rank 0 tells people and tools about a run: the progress line on stdout
// (step, loss, accuracy, lr, gradient norm, tokens/s, MFU, ETA, peak memory, and with
// logging.profile the time per phase) and <out_dir>/metrics.jsonl, one JSON object per record
// ({"split": "train"|"eval", "step", "loss", ...}; README "A run directory holds"). A resumed
// run keeps the records up to the step it resumed from.
#pragma once
#include <array>
#include <cstdint>
#include <fstream>
#include <string>

#include "core/allocator.h"
#include "trainers/step_profile.h"
#include "trainers/train.h"

namespace lctx::train {

// What a train record reports besides the step's StepRecord.
struct TrainRecordInfo {
  double tokens_per_s = 0, mfu = 0, eta_s = 0;
  int64_t tokens = 0;  // tokens consumed so far
  int64_t skipped_total = 0;
  // Bytes this rank handed to its sequence-parallel groups (sp, Ulysses, ring: sends and
  // collective inputs) per training step, forward + backward, averaged since the last record.
  double sp_bytes = 0;
  MemoryStats memory;
  const std::array<double, kPhases>* profile_ms = nullptr;  // summed over profile_steps steps
  int64_t profile_steps = 0;
};

class MetricsLog {
 public:
  // print: progress lines on stdout; total_steps: the N of "step n/N".
  MetricsLog(int64_t total_steps, bool print) : total_steps_(total_steps), print_(print) {}
  // Opens metrics.jsonl at `path`, keeping its records of steps <= keep_up_to_step (0: none).
  void open(const std::string& path, int64_t keep_up_to_step);
  void train(const StepRecord& r, const TrainRecordInfo& info);
  void eval(const StepRecord& r, int64_t tokens, int64_t answers);
  void flush();

 private:
  int64_t total_steps_;
  bool print_;
  std::ofstream out_;
};

}  // namespace lctx::train
