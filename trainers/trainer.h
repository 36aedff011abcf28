// Trainer: everything one rank holds during a training run (mesh, layout, model, optimizer
// state, data, metrics) and the step loop:
//   batch -> forward/backward -> gradient all-reduce over all ranks -> NaN/Inf check (the step
//   is skipped and reported) -> clip -> AdamW (warmup + cosine) -> metrics, eval, checkpoints.
// run_training (train.cpp) builds one per rank. Checkpoint save and resume are in
// trainer_checkpoint.cpp; the progress line and metrics.jsonl in metrics_log.h.
#pragma once
#include <array>
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/data.h"
#include "trainers/metrics_log.h"
#include "trainers/model.h"
#include "trainers/step_profile.h"
#include "trainers/train.h"

namespace lctx::train {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// train.device resolved: simulated ranks share GPU 0; real ranks take one GPU each per node.
Device device_for(const Config& cfg, bool simulated, int world_rank);
// The stop signal requested so far (0: none); see request_stop.
int pending_stop_signal();

// Collective: when some rank's `err` is not empty, every rank throws the error of the lowest
// such rank; otherwise it returns.
void throw_first_error(dist::Comm& comm, const std::string& err);

// Runs `fn` on rank 0 only; every rank then learns whether it failed and throws the same error.
template <class Fn>
void on_root(dist::Comm& comm, Fn&& fn) {
  std::string err;
  if (comm.rank() == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = e.what();
      if (err.empty()) err = "unknown error";
    }
  }
  throw_first_error(comm, err);
}

// Everything one rank holds during training.

class Trainer {
 public:
  // world: the communicator for tensors on the compute device (gradients, attention);
  // ctrl: the same ranks for host values (counters, flags, messages). They are one and the
  // same communicator except with NCCL, whose ctrl is the MPI communicator it was built from.
  Trainer(const Config& cfg, dist::Comm& world, dist::Comm& ctrl, RunResult& result, const RunHooks& hooks);
  void run();

 private:
  bool is_root() const { return world_.rank() == 0; }
  void prepare_out_dir();
  void banner();
  double mfu(double tok_s, double attention_span) const;
  void apply_adamw(double lr);
  void evaluate();
  // eval.seq_len other than data.seq_len: the same model built at that length, its layout and
  // data; evaluate() copies the trained weights into it.
  struct EvalLength {
    Config cfg;  // eval_length_config
    std::unique_ptr<dist::Layout> layout;
    Shard shard;
    std::unique_ptr<Model> model;
    std::unique_ptr<Dataset> data;
  };
  // make_batch on every rank (from `at`'s data and shards when given); a data error on any rank
  // (a file changed under the run, an id outside the vocabulary) saves a checkpoint of the last
  // completed step, then fails every rank.
  Batch next_batch(Split split, int64_t first, const EvalLength* at = nullptr);
  // trainer_checkpoint.cpp
  std::pair<uint64_t, uint64_t> rng_state() const;
  void save();
  void resume();
  void check_compatible(const CheckpointState& st, const std::string& file) const;

  const Config& cfg_;
  dist::Comm& world_;
  dist::Comm& ctrl_;
  RunResult& result_;
  const RunHooks& hooks_;
  Shard shard_;
  std::unique_ptr<dist::Mesh> mesh_;
  std::unique_ptr<dist::Layout> layout_;
  Device device_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<StepProfile> profile_;      // logging.profile
  std::array<double, kPhases> profile_ms_{};  // per phase, summed over the steps since the last log
  int64_t profile_steps_ = 0;
  Tensor m_, v_;
  std::unique_ptr<Dataset> data_;
  std::unique_ptr<EvalLength> eval_length_;  // eval.seq_len differs from data.seq_len
  std::string out_dir_, ckpt_dir_;
  MetricsLog metrics_;
  int64_t step_ = 0, adam_step_ = 0, consumed_ = 0, skipped_ = 0;
  int64_t saved_step_ = 0;  // the newest step with a checkpoint (saved or resumed from)
  uint64_t rng_offset_ = 0;
};

}  // namespace lctx::train
