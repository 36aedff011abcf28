// Packed documents, host side: where each document of a batch row starts. The device-side
// document ids that flash attention masks with (FlashOptions::q_doc_ids / k_doc_ids) are the
// index of each position's document under these starts (ids(), sharded by the Layout like the
// tokens). The host copy lets schedulers decide without reading device memory which blocks of
// positions share no document: ring attention skips those blocks' compute (its exchanges still
// run, every rank posts the same sequence).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace lctx::attn {

class Documents {
 public:
  // starts[b]: ascending global positions where row b's documents begin; starts[b][0] == 0 and
  // every start < seq_len (checked, naming the row and the offending start).
  Documents(int64_t seq_len, std::vector<std::vector<int64_t>> starts);

  int64_t batch() const { return static_cast<int64_t>(starts_.size()); }
  int64_t seq_len() const { return seq_len_; }
  const std::vector<int64_t>& starts(int64_t b) const { return starts_[static_cast<size_t>(b)]; }

  // Index of the document of row b that holds global position pos.
  int32_t doc_of(int64_t b, int64_t pos) const;
  // True when, in some row, a document holds positions of both ranges [q_lo, q_hi) and
  // [k_lo, k_hi) (empty ranges share nothing).
  bool share_document(int64_t q_lo, int64_t q_hi, int64_t k_lo, int64_t k_hi) const;
  // The length of one sequence whose causal attention has as many pairs per token as these
  // documents: sum of the squared document lengths over seq_len, averaged over rows (seq_len
  // for one document per row). FLOP counts (MFU) of packed batches use it.
  double attention_span() const;
  // Document ids [B, S] in global order (row-major), non-decreasing along each row.
  std::vector<int32_t> ids() const;

 private:
  int64_t seq_len_;
  std::vector<std::vector<int64_t>> starts_;
};

}  // namespace lctx::attn
