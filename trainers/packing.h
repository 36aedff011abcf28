// Packed documents (data.documents): several documents share one sequence, attention stays
// inside each (flash attention's document ids) and the label of a document's last token, which
// would be the next document's first token, is not scored. A Dataset reports where documents
// start in each sample (a window of seq_len + 1 tokens):
//   eod      (text, tokens) after each token data.eod_id: the eod token ends its document
//   offsets  (hdf5) at the offsets of data.offsets_dataset that fall inside the window
//   fixed    every data.document_len tokens from the start of the sequence (synthetic tasks put
//            one sample in each document)
// and make_batch turns those starts into what a batch carries: the attn::Documents of its rows
// in global positions (a document cut by the sequence boundary is simply the first or the last
// document of its row; the next sequence is another window), and for one rank's tokens their
// document ids and, with data.reset_positions, their positions inside their document (RoPE).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "attn/documents.h"
#include "core/tensor.h"
#include "trainers/config.h"

namespace lctx::train {

enum class DocumentMode { none, eod, offsets, fixed };
DocumentMode document_mode(const DataConfig& d);  // data.documents
// Positions of the tokens for RoPE: along the sequence, or from each document's start.
enum class PositionMode { sequence, document };
PositionMode position_mode(const DataConfig& d);  // data.reset_positions

// Where documents start in a sample of seq_len + 1 tokens x: ascending positions in
// (0, seq_len]; seq_len is listed when the last target, x[seq_len], begins a new document.
// `starts` is overwritten.
void eod_starts(const int32_t* x, int64_t seq_len, int32_t eod_id, std::vector<int64_t>& starts);
void fixed_starts(int64_t seq_len, int64_t document_len, std::vector<int64_t>& starts);
// offsets: every document's start in the token stream (ascending); the sample is the window of
// the stream that begins at window_begin.
void offset_starts(std::span<const int64_t> offsets, int64_t window_begin, int64_t seq_len,
                   std::vector<int64_t>& starts);

// No loss across a boundary: scored[s - 1] = 0 for every start s (the prediction of a
// document's first token from the previous document's last one).
void ignore_boundary_labels(std::span<const int64_t> starts, uint8_t* scored);
// One row of attn::Documents: 0 and the starts below seq_len.
std::vector<int64_t> row_starts(std::span<const int64_t> starts, int64_t seq_len);

// One rank's share of a batch's documents, at its tokens' global positions (layout order):
struct TokenDocuments {
  Tensor doc_ids;    // i32 [B, L]: Documents::ids() at those positions (sharded like the tokens)
  Tensor positions;  // i32 [B, L] with PositionMode::document: each token's offset in its document
};
TokenDocuments shard_documents(const attn::Documents& docs, std::span<const int64_t> positions, PositionMode mode);

}  // namespace lctx::train
