#include "trainers/packing.h"

#include <algorithm>

#include "core/error.h"

namespace lctx::train {

DocumentMode document_mode(const DataConfig& d) {
  if (d.documents == "none") return DocumentMode::none;
  if (d.documents == "eod") return DocumentMode::eod;
  if (d.documents == "offsets") return DocumentMode::offsets;
  if (d.documents == "fixed") return DocumentMode::fixed;
  LCTX_FAIL("data: data.documents must be one of none, eod, offsets, fixed, got '", d.documents, "'");
}

PositionMode position_mode(const DataConfig& d) {
  return d.reset_positions ? PositionMode::document : PositionMode::sequence;
}

void eod_starts(const int32_t* x, int64_t seq_len, int32_t eod_id, std::vector<int64_t>& starts) {
  starts.clear();
  for (int64_t i = 0; i < seq_len; ++i)
    if (x[i] == eod_id) starts.push_back(i + 1);
}

void fixed_starts(int64_t seq_len, int64_t document_len, std::vector<int64_t>& starts) {
  LCTX_CHECK(document_len >= 1, "data: data.document_len must be >= 1, got ", document_len);
  starts.clear();
  for (int64_t s = document_len; s <= seq_len; s += document_len) starts.push_back(s);
}

void offset_starts(std::span<const int64_t> offsets, int64_t window_begin, int64_t seq_len,
                   std::vector<int64_t>& starts) {
  starts.clear();
  const auto lo = std::upper_bound(offsets.begin(), offsets.end(), window_begin);
  const auto hi = std::upper_bound(lo, offsets.end(), window_begin + seq_len);
  for (auto it = lo; it != hi; ++it) starts.push_back(*it - window_begin);
}

void ignore_boundary_labels(std::span<const int64_t> starts, uint8_t* scored) {
  for (int64_t s : starts) scored[s - 1] = 0;
}

std::vector<int64_t> row_starts(std::span<const int64_t> starts, int64_t seq_len) {
  std::vector<int64_t> row = {0};
  for (int64_t s : starts)
    if (s < seq_len) row.push_back(s);
  return row;
}

TokenDocuments shard_documents(const attn::Documents& docs, std::span<const int64_t> positions, PositionMode mode) {
  const int64_t B = docs.batch(), S = docs.seq_len(), L = static_cast<int64_t>(positions.size());
  const std::vector<int32_t> ids = docs.ids();
  TokenDocuments t;
  t.doc_ids = Tensor::empty({B, L}, DType::i32);
  if (mode == PositionMode::document) t.positions = Tensor::empty({B, L}, DType::i32);
  int32_t* id = t.doc_ids.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i) {
      const int64_t p = positions[i];
      LCTX_CHECK(p >= 0 && p < S, "shard_documents: position ", p, " outside the sequence of ", S, " tokens");
      id[b * L + i] = ids[b * S + p];
      if (mode == PositionMode::document)
        t.positions.data<int32_t>()[b * L + i] = static_cast<int32_t>(p - docs.starts(b)[ids[b * S + p]]);
    }
  return t;
}

}  // namespace lctx::train
