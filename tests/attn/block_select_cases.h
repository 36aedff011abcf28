// Shared by test_block_select (CPU, f64) and test_block_select_gpu: the shapes swept, their key
// lists (drawn, with empty slots and some query blocks left without keys), and lse compared with
// its -inf rows (no key) mapped to 0 after checking they agree.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "attn/block_select.h"
#include "core/tensor.h"

namespace lctx::test {

struct BlockSelectCase {
  std::string name;
  int64_t B, Sq, Sk, Hq, Hkv, D, q_block, k_block, n;
};
inline void PrintTo(const BlockSelectCase& c, std::ostream* os) { *os << c.name; }

// Per list l: n slots drawn among the Sk / k_block whole blocks; lists 8..15, 24..31, ... full
// (with enough blocks: stretches of 8 full lists take the unmasked calls), of the others every
// third slot (by l + i) left empty and every fifth list empty altogether.
inline attn::KeyBlocks key_blocks(const BlockSelectCase& c) {
  attn::KeyBlocks kb{.q_block = c.q_block, .k_block = c.k_block, .per_query = c.n, .index = {}};
  const int64_t lists = c.B * c.Hkv * (c.Sq / c.q_block), blocks = c.Sk / c.k_block;
  for (int64_t l = 0; l < lists; ++l) {
    const std::vector<int64_t> drawn = attn::draw_distinct(17, l, blocks, c.n);
    for (int64_t i = 0; i < c.n; ++i) {
      const bool full = l / 8 % 2 == 1;
      const bool empty = (!full && (l % 5 == 4 || (l + i) % 3 == 0)) || i >= static_cast<int64_t>(drawn.size());
      kb.index.push_back(empty ? -1 : static_cast<int32_t>(drawn[static_cast<size_t>(i)]));
    }
  }
  return kb;
}

// lse with its -inf entries (rows without keys) set to 0, after checking `got` has -inf exactly there.
inline Tensor finite_lse(const Tensor& got, const Tensor& want) {
  std::vector<double> g = got.to_vector(), w = want.to_vector();
  EXPECT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size() && i < w.size(); ++i) {
    EXPECT_EQ(std::isinf(g[i]), std::isinf(w[i])) << "lse entry " << i << ": " << g[i] << " vs " << w[i];
    if (std::isinf(g[i])) g[i] = 0.0;
  }
  return Tensor::from_vector(got.shape(), g, DType::f64);
}

}  // namespace lctx::test
