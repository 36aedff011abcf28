#include "attn/documents.h"

#include <algorithm>

#include "core/error.h"

namespace lctx::attn {

Documents::Documents(int64_t seq_len, std::vector<std::vector<int64_t>> starts)
    : seq_len_(seq_len), starts_(std::move(starts)) {
  LCTX_CHECK(seq_len_ > 0, "Documents: seq_len must be positive, got ", seq_len_);
  for (size_t b = 0; b < starts_.size(); ++b) {
    const auto& s = starts_[b];
    LCTX_CHECK(!s.empty() && s[0] == 0, "Documents: row ", b, " must start a document at position 0");
    for (size_t i = 1; i < s.size(); ++i)
      LCTX_CHECK(s[i] > s[i - 1] && s[i] < seq_len_, "Documents: row ", b, " start ", i, " = ", s[i],
                 " must be above the previous start (", s[i - 1], ") and below seq_len ", seq_len_);
  }
}

int32_t Documents::doc_of(int64_t b, int64_t pos) const {
  const auto& s = starts(b);
  return static_cast<int32_t>(std::upper_bound(s.begin(), s.end(), pos) - s.begin() - 1);
}

bool Documents::share_document(int64_t q_lo, int64_t q_hi, int64_t k_lo, int64_t k_hi) const {
  if (q_lo >= q_hi || k_lo >= k_hi) return false;
  for (int64_t b = 0; b < batch(); ++b) {
    // Documents are intervals of positions: the two ranges share one iff their document
    // index intervals overlap.
    if (doc_of(b, q_lo) <= doc_of(b, k_hi - 1) && doc_of(b, k_lo) <= doc_of(b, q_hi - 1)) return true;
  }
  return false;
}

double Documents::attention_span() const {
  double sum = 0;
  for (int64_t b = 0; b < batch(); ++b) {
    const auto& s = starts(b);
    for (size_t d = 0; d < s.size(); ++d) {
      const double len = static_cast<double>((d + 1 < s.size() ? s[d + 1] : seq_len_) - s[d]);
      sum += len * len;
    }
  }
  return batch() > 0 ? sum / static_cast<double>(seq_len_) / static_cast<double>(batch()) : 0.0;
}

std::vector<int32_t> Documents::ids() const {
  std::vector<int32_t> out(static_cast<size_t>(batch() * seq_len_));
  for (int64_t b = 0; b < batch(); ++b) {
    const auto& s = starts(b);
    for (size_t d = 0; d < s.size(); ++d) {
      const int64_t end = d + 1 < s.size() ? s[d + 1] : seq_len_;
      std::fill(out.begin() + b * seq_len_ + s[d], out.begin() + b * seq_len_ + end, static_cast<int32_t>(d));
    }
  }
  return out;
}

}  // namespace lctx::attn
