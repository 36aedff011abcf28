// Training data for lctx-train. A Dataset produces sample `index` of a split as S+1 tokens plus
// a mask of the positions scored by the loss and the accuracy metric; a sample depends only on
// (data.seed, split, index), never on the rank layout or on earlier samples, so the loader's
// whole state is the number of samples consumed and any dp/sp layout sees the same data.
// Synthetic long-context tasks (generated on the fly, answer tokens scored):
//   passkey         filler tokens with "KEY d1..dD" at a chosen depth; the sequence ends with
//                   "QUERY d1..dD" and the D digits after QUERY are scored.
//   mqar            multi-query associative recall: "k1 v1 ... kP vP", filler, then Q queries
//                   "k v" of earlier keys; each v after a queried k is scored.
//   selective_copy  T data tokens scattered in noise, then "COPY t1..tT"; the copies are scored.
// Real data (every next-token prediction scored): `text` (a byte file), `tokens` (raw
// uint16/uint32 little-endian ids) and `hdf5` (a 1-D integer dataset); the last `data.holdout`
// fraction of the file is the eval split. Samples are windows at deterministic pseudo-random
// offsets. With data.documents (packing.h) a sample also says where its documents start; a
// packed synthetic task (fixed) holds seq_len / document_len task samples, one per document. A data file is checked where a user can get it wrong, as early as possible:
//   - data.path must be a regular file (a FIFO or device would block the open, or change);
//   - make_dataset checks the split sizes and, for a file up to DataChecks::id_scan_max_bytes,
//     every id against model.vocab_size, so these fail before the first step;
//   - every window is read with calls that report errors (pread, H5Dread) and the file's size and
//     modification time are re-checked after each read, so a file truncated, grown or rewritten
//     under a run is an lctx::Error naming it (a memory map would die by SIGBUS, and HDF5 reads
//     zeros past the end of a truncated file).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attn/documents.h"
#include "core/tensor.h"
#include "trainers/config.h"

namespace lctx::train {

enum class Split { train, eval };

// Token ids reserved by the synthetic tasks.
namespace tokens {
// passkey: digits 0..9 are tokens 0..9.
constexpr int32_t kPasskeyKey = 10, kPasskeyQuery = 11, kPasskeyFillerBegin = 12;
// mqar: filler 0, keys [1, 1 + K), values [1 + K, vocab) with K = (vocab - 1) / 2.
constexpr int32_t kMqarFiller = 0;
// selective_copy: noise 0, copy marker 1, data tokens [2, vocab).
constexpr int32_t kCopyNoise = 0, kCopyMarker = 1, kCopyDataBegin = 2;
}  // namespace tokens

class Dataset {
 public:
  virtual ~Dataset() = default;
  // Writes seq_len + 1 tokens to `x` and seq_len flags to `scored` (scored[i]: the prediction
  // of x[i + 1] from position i counts), and to `starts` the positions in (0, seq_len] where a
  // document starts (packing.h; empty with data.documents: none).
  virtual void sample(Split split, int64_t index, int32_t* x, uint8_t* scored, std::vector<int64_t>& starts) const = 0;
  virtual std::string describe() const = 0;
};

// Start-up checks of a real data file that need more than the data config.
struct DataChecks {
  // eval.batches of the run: > 0 needs an eval split of at least data.seq_len + 1 tokens.
  int64_t eval_batches = 0;
  // A file of at most this many bytes has every id checked against model.vocab_size when the
  // dataset is made (read in chunks); a larger one is checked window by window as it is read.
  int64_t id_scan_max_bytes = int64_t{256} << 20;
};

// Throws lctx::Error naming the data.* key and the file when the source cannot be used.
std::unique_ptr<Dataset> make_dataset(const DataConfig& d, int64_t vocab_size, const DataChecks& checks = {});

// Which part of the global batch one rank holds: dp rank d of dp takes samples
// [d * B/dp, (d+1) * B/dp); of every sequence it holds the tokens at `positions` (global, in
// local order: dist::Layout's zigzag shard of its sp rank, see shard_positions).
struct Shard {
  int64_t dp_rank = 0, dp = 1;
  std::vector<int64_t> positions;
};

// Global positions held by sp rank `sp_rank` under dist::Layout(zigzag, seq_len, ring, ulysses).
std::vector<int64_t> shard_positions(int64_t seq_len, int64_t ring, int64_t ulysses, int64_t sp_rank);

// One rank's share of the batch of a step (CPU tensors).
struct Batch {
  Tensor inputs;     // i32 [B_local, S_local]
  Tensor targets;    // i32 [B_local, S_local]; -1 where not scored (and at document boundaries)
  // i32 [S_local]: global positions of the local tokens; with data.reset_positions i32
  // [B_local, S_local]: their positions inside their documents.
  Tensor positions;
  // Packed documents (data.documents other than none), else undefined / null: the document id
  // of each local token, i32 [B_local, S_local], and the documents of the B_local rows in
  // global positions (the ids index them).
  Tensor doc_ids;
  std::shared_ptr<const attn::Documents> documents;
  int64_t scored = 0;  // number of targets != -1 in this rank's share
};

// The global batch is samples [first, first + data.batch_size) of `split`; the trainer's data
// state is the number of train samples consumed so far (the next `first`). Every tensor is
// sharded by shard.positions, tokens, labels, doc ids and positions alike.
Batch make_batch(const Dataset& data, const DataConfig& d, Split split, int64_t first, const Shard& shard);

}  // namespace lctx::train
