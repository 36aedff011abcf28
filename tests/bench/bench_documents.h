// Packed documents for the benchmarks (bench_flash, bench_ring): one batch row cut into
// documents of equal length or of random lengths (bench_flash_torch.py draws the same random
// cuts), the visible pairs of causal attention inside them, and the FlashOptions that mask
// by them (device ids and the host description ring attention skips blocks with).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "attn/documents.h"
#include "attn/flash.h"
#include "core/tensor.h"

namespace lctx::bench {

// Starts of n documents of S / n tokens each (n divides S).
inline std::vector<int64_t> equal_starts(int64_t S, int64_t n) {
  std::vector<int64_t> starts;
  for (int64_t d = 0; d < n; ++d) starts.push_back(d * (S / n));
  return starts;
}

// Starts of n documents: 0 and n - 1 distinct cuts drawn uniformly from [1, S) by splitmix64
// seeded with `seed` (mean length S / n, lengths unrelated to any tile size). Must stay the
// same generator as random_starts in bench_flash_torch.py.
inline std::vector<int64_t> random_starts(int64_t S, int64_t n, uint64_t seed) {
  uint64_t x = seed;
  std::set<int64_t> cuts{0};
  while (static_cast<int64_t>(cuts.size()) < n) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    cuts.insert(1 + static_cast<int64_t>(z % static_cast<uint64_t>(S - 1)));
  }
  return {cuts.begin(), cuts.end()};
}

// Lengths of the documents that start at `starts` in a sequence of S tokens.
inline std::vector<int64_t> lengths(const std::vector<int64_t>& starts, int64_t S) {
  std::vector<int64_t> out;
  for (size_t d = 0; d < starts.size(); ++d) out.push_back((d + 1 < starts.size() ? starts[d + 1] : S) - starts[d]);
  return out;
}

// Visible (query, key) pairs of causal attention inside the documents, with the
// FlashAttention convention for causal blocks (L tokens: L^2 / 2 pairs).
inline double causal_pairs(const std::vector<int64_t>& starts, int64_t S) {
  double pairs = 0;
  for (int64_t len : lengths(starts, S)) pairs += double(len) * double(len) / 2;
  return pairs;
}

// "a,b,c": the document lengths, as bench_flash_torch.py prints them.
inline std::string lengths_str(const std::vector<int64_t>& starts, int64_t S) {
  std::string out;
  for (int64_t len : lengths(starts, S)) {
    if (!out.empty()) out += ',';
    out += std::to_string(len);
  }
  return out;
}

// One batch row of documents of a sequence of S tokens, and its ids: i32 [1, S] on the CPU.
inline std::shared_ptr<const attn::Documents> one_row(int64_t S, std::vector<int64_t> starts) {
  return std::make_shared<const attn::Documents>(S, std::vector<std::vector<int64_t>>{std::move(starts)});
}
inline Tensor ids_tensor(const attn::Documents& docs) {
  const std::vector<int32_t> ids = docs.ids();
  Tensor t = Tensor::empty({docs.batch(), docs.seq_len()}, DType::i32);
  std::copy(ids.begin(), ids.end(), t.data<int32_t>());
  return t;
}

// Masks `opts` by the documents: q/k ids `ids` (this call's tokens, on their device) and the
// host description of the whole sequence.
inline void set_documents(attn::FlashOptions& opts, std::shared_ptr<const attn::Documents> docs, const Tensor& ids) {
  opts.q_doc_ids = opts.k_doc_ids = ids;
  opts.documents = std::move(docs);
}

}  // namespace lctx::bench
