// Training checkpoints in HDF5, readable with h5dump and independent of the rank layout.
// File `<dir>/step-<NNNNNNNN>.h5`:
//   /params/<name>               f32, the parameter's GLOBAL shape (fp32 master weights)
//   /optimizer/m/<name>, /v/...  f32, AdamW moments, same shapes
//   /rng/state                   u64 [world, 2]: (seed, offset) of each rank's Philox stream
//   root attributes              format_version, step, adam_step, mesh_dp, mesh_sp, mesh_ulysses,
//                                data_consumed_samples, data_seed, skipped_steps, config (YAML)
// Every dataset carries a `checksum` attribute (FNV-1a 64 of its bytes) verified on load.
// Saving is atomic: the file is written as `<name>.tmp`, fsync'ed, renamed, and the directory
// fsync'ed; a crash mid-save leaves only a .tmp that is never picked up. After a save only the
// newest `keep` checkpoints remain.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lctx::train {

constexpr int64_t kCheckpointFormatVersion = 1;

struct CheckpointState {
  int64_t step = 0;       // training steps done (including skipped ones)
  int64_t adam_step = 0;  // AdamW updates applied (bias-correction count)
  std::vector<std::pair<std::string, Tensor>> params;  // f32 CPU tensors of global shapes
  std::vector<std::pair<std::string, Tensor>> adam_m, adam_v;
  std::vector<uint64_t> rng_state;  // 2 per rank: (seed, offset)
  int64_t data_consumed_samples = 0;
  int64_t data_seed = 0;
  int64_t skipped_steps = 0;
  int64_t mesh_dp = 1, mesh_sp = 1, mesh_ulysses = 1;
  std::string config_yaml;
};

// Path of the checkpoint for `step` in `dir`.
std::string checkpoint_path(const std::string& dir, int64_t step);

// Writes atomically (see above), then removes all but the newest `keep` checkpoints in dir.
void save_checkpoint(const std::string& dir, const CheckpointState& st, int64_t keep);

// Reads and verifies (format version, every checksum, shapes); throws lctx::Error naming the
// file and what is wrong.
CheckpointState load_checkpoint(const std::string& file);

// Checkpoint files in dir, newest step first (completed ones only: no .tmp files).
std::vector<std::string> list_checkpoints(const std::string& dir);

// The newest checkpoint in dir that loads and verifies; invalid ones are skipped with a warning
// on stderr. Empty when there is none. With `loaded`, the state read while verifying is
// handed back (each file is read once).
std::string find_latest_valid(const std::string& dir, std::vector<std::string>* warnings = nullptr,
                              CheckpointState* loaded = nullptr);

// Test hook: when the environment variable LCTX_CKPT_CRASH_AFTER=<n> is set, the process is
// killed (SIGKILL) after writing n datasets of a checkpoint, leaving a partial .tmp file.
constexpr const char* kCrashEnv = "LCTX_CKPT_CRASH_AFTER";

}  // namespace lctx::train
