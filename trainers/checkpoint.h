// Training checkpoints in HDF5, readable with h5dump and independent of the rank layout.
// File `<dir>/step-<NNNNNNNN>.h5`:
//   /params/<name>               f32, the parameter's GLOBAL shape (fp32 master weights)
//   /optimizer/m/<name>, /v/...  f32, AdamW moments, same names and shapes as /params
//   /rng/state                   u64 [mesh_dp * mesh_sp, 2]: (seed, offset) of each rank's Philox stream
//   root attributes              format_version, step, adam_step, mesh_dp, mesh_sp, mesh_ulysses,
//                                data_consumed_samples, data_seed, skipped_steps, config (YAML),
//                                attribute_checksums
// Integrity (format 2): the file is written in the HDF5 1.8 format, whose metadata (superblock,
// object headers, heaps, B-trees) HDF5 checksums and verifies before parsing it; each dataset
// carries a `checksum` attribute, FNV-1a 64 of its shape (rank, dims as u64) then its bytes;
// `attribute_checksums` (u64 array) holds one FNV-1a 64 per root attribute (over its name and
// value, in the order listed above, config included) and a last one over the sorted list of
// dataset paths. Format-1 files (the earliest HDF5 layout, without metadata checksums; dataset
// checksums over the bytes only; no attribute checksums) still load, their attributes
// range-checked only.
// Loading checks, before any data is allocated: every attribute's type and range (step >= 0,
// adam_step + skipped_steps == step, step <= data_consumed_samples <= step * max batch, mesh
// degrees >= 1 with rng rows == mesh_dp * mesh_sp, ...), every dataset's type, rank, dims and
// size against its stored bytes and the file size, and that the optimizer moments match the
// parameters; then every checksum. A bad file is an lctx::Error naming the file and the
// attribute or dataset.
// Saving is atomic: the file is written as `<name>.tmp`, fsync'ed, renamed, and the directory
// fsync'ed; a crash mid-save leaves only a .tmp that is never picked up.
// Retention after writing step S never deletes the file just written, nor a verified checkpoint
// because of other files:
//   - files of a step >= S that were there before (an abandoned future: the run was resumed
//     from an earlier step; or corrupt files) are moved into `<dir>/abandoned/`, never counted,
//     never deleted, so that `resume: auto` continues from S;
//   - below S, newest first, checkpoints are verified (those this process wrote or loaded are
//     not read again) until `keep - 1` verified ones are found; a file that fails verification
//     is moved into `<dir>/corrupt/` and counted for nothing; older files are deleted.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lctx::train {

constexpr int64_t kCheckpointFormatVersion = 2;
// Subdirectories of the checkpoint directory where retention sets files aside.
constexpr const char* kAbandonedDir = "abandoned";
constexpr const char* kCorruptDir = "corrupt";

struct CheckpointState {
  int64_t format_version = kCheckpointFormatVersion;  // as read (1: no attribute checksums)
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

// Writes atomically, then applies the retention policy (see above). Set-aside files are
// reported on stderr and, with `notes`, handed back.
void save_checkpoint(const std::string& dir, const CheckpointState& st, int64_t keep,
                     std::vector<std::string>* notes = nullptr);

// Reads and verifies (see above); throws lctx::Error naming the file and what is wrong.
CheckpointState load_checkpoint(const std::string& file);

// Checkpoint files in dir, newest step first (completed ones only: no .tmp files, nothing set
// aside).
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
