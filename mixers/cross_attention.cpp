#include "mixers/cross_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "attn/flash_few_keys.h"

namespace lctx::mixers {

namespace {

// One flash call: the query rows begin, begin + step, ... below end against the first `keys`
// memory rows, every pair visible (a run, step 1) or causal in block units (block memory).
struct Call {
  int64_t begin = 0, end = 0, step = 1, keys = 0;
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;  // causal: row i of the call sees key j iff k_offset + j <= q_offset + i
};

// Runs of consecutive query rows that see the same prefix of the memory rows (checks the call).
std::vector<Call> visible_runs(const Tensor& q, std::span<const int64_t> q_pos, const Tensor& k,
                               std::span<const int64_t> k_pos) {
  const int64_t L = q.size(1), N = k.size(1);
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4, "cross_attention: q ", q.str(), " and k ", k.str(),
             " must be [B, rows, heads, head_dim]");
  if (k_pos.empty()) return N > 0 && L > 0 ? std::vector<Call>{{.begin = 0, .end = L, .keys = N}} : std::vector<Call>{};
  LCTX_CHECK(static_cast<int64_t>(k_pos.size()) == N, "cross_attention: ", k_pos.size(), " key positions for k ",
             k.str());
  LCTX_CHECK(static_cast<int64_t>(q_pos.size()) == L, "cross_attention: ", q_pos.size(), " query positions for q ",
             q.str(), " (key rows with positions need the queries' positions)");
  LCTX_CHECK(std::is_sorted(k_pos.begin(), k_pos.end()), "cross_attention: key positions must be non-decreasing");
  std::vector<Call> runs;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t n = std::upper_bound(k_pos.begin(), k_pos.end(), q_pos[static_cast<size_t>(i)]) - k_pos.begin();
    if (!runs.empty() && runs.back().end == i && runs.back().keys == n)
      runs.back().end = i + 1;
    else
      runs.push_back({.begin = i, .end = i + 1, .keys = n});
  }
  std::erase_if(runs, [](const Call& r) { return r.keys == 0; });
  return runs;
}

// Block memory (row c at position (c + 1) b - 1: compressed blocks of b tokens) and queries in
// segments of whole blocks at consecutive rows: the queries at offset t of their blocks (rows
// stepped by b) see rows c <= J - 1 (t < b - 1) or c <= J (t = b - 1), J their block, so each
// (segment, t) is one causal call in block units, b per segment instead of ~2 per block.
// Empty when the rows are not of this form.
std::vector<Call> block_calls(std::span<const int64_t> q_pos, std::span<const int64_t> k_pos) {
  const int64_t N = static_cast<int64_t>(k_pos.size()), L = static_cast<int64_t>(q_pos.size());
  if (N == 0 || L == 0) return {};
  const int64_t b = k_pos[0] + 1;
  for (int64_t c = 0; c < N; ++c)
    if (b < 1 || k_pos[static_cast<size_t>(c)] != (c + 1) * b - 1) return {};
  std::vector<Call> calls;
  for (int64_t r0 = 0; r0 < L;) {
    int64_t r1 = r0 + 1;
    while (r1 < L && q_pos[static_cast<size_t>(r1)] == q_pos[static_cast<size_t>(r1 - 1)] + 1) ++r1;
    const int64_t p0 = q_pos[static_cast<size_t>(r0)];
    if (p0 % b != 0 || (r1 - r0) % b != 0) return {};
    const int64_t j0 = p0 / b, blocks = (r1 - r0) / b;
    for (int64_t t = 0; t < b; ++t) {
      const bool last = t == b - 1;
      const int64_t first = j0 == 0 && !last ? 1 : 0;  // block 0's first b - 1 tokens see no row
      const int64_t keys = std::min(N, j0 + blocks - 1 + (last ? 1 : 0));
      if (first >= blocks || keys == 0) continue;
      calls.push_back({.begin = r0 + first * b + t,
                       .end = r1,
                       .step = b,
                       .keys = keys,
                       .causal = true,
                       .q_offset = j0 + first,
                       .k_offset = last ? 0 : 1});
    }
    r0 = r1;
  }
  return calls;
}

// The fewer flash calls of the two forms.
std::vector<Call> flash_calls(const Tensor& q, std::span<const int64_t> q_pos, const Tensor& k,
                              std::span<const int64_t> k_pos) {
  std::vector<Call> runs = visible_runs(q, q_pos, k, k_pos);
  std::vector<Call> blocks = block_calls(q_pos, k_pos);
  return !blocks.empty() && blocks.size() < runs.size() ? blocks : runs;
}

attn::FlashOptions flash_options(const CrossAttentionOptions& o, const Call& c) {
  attn::FlashOptions f;
  f.softmax_scale = o.softmax_scale;
  f.backend = o.backend;
  f.out_dtype = attn::OutputDType::f32;
  if (c.causal) {
    f.mask = attn::Mask::causal;
    f.q_offset = c.q_offset;
    f.k_offset = c.k_offset;
  }
  return f;
}

}  // namespace

attn::FlashOutput cross_attention_forward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k,
                                          const Tensor& v, std::span<const int64_t> k_positions,
                                          const CrossAttentionOptions& opts, Stream s) {
  const std::vector<Call> calls = flash_calls(q, q_positions, k, k_positions);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  if (calls.size() == 1 && !calls[0].causal && calls[0].begin == 0 && calls[0].end == L && calls[0].keys == k.size(1))
    return attn::flash_forward(q, k, v, flash_options(opts, calls[0]), s);
  const DType wd = wide_dtype(q.dtype());
  attn::FlashOutput out{Tensor::zeros(q.shape(), wd, q.device(), s),
                        Tensor::full({B, H, L}, -std::numeric_limits<double>::infinity(), wd, q.device(), s)};
  for (const Call& c : calls) {
    const attn::FlashOutput part = attn::flash_forward(q.slice(1, c.begin, c.end, c.step), k.slice(1, 0, c.keys),
                                                       v.slice(1, 0, c.keys), flash_options(opts, c), s);
    out.o.slice(1, c.begin, c.end, c.step).copy_from(part.o, s);
    out.lse.slice(2, c.begin, c.end, c.step).copy_from(part.lse, s);
  }
  return out;
}

void cross_attention_backward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k, const Tensor& v,
                              std::span<const int64_t> k_positions, const Tensor& o, const Tensor& lse,
                              const Tensor& dout, const CrossAttentionOptions& opts, const attn::FlashGrads& into,
                              Stream s) {
  for (const Call& c : flash_calls(q, q_positions, k, k_positions)) {
    const auto rows = [&](const Tensor& t) { return t.slice(1, c.begin, c.end, c.step); };
    const Tensor l = lse.slice(2, c.begin, c.end, c.step);
    const attn::FlashGrads g{rows(into.dq), into.dk.slice(1, 0, c.keys), into.dv.slice(1, 0, c.keys)};
    const Tensor kc = k.slice(1, 0, c.keys), vc = v.slice(1, 0, c.keys);
    if (c.causal)  // flash's lse rows have stride 1
      attn::flash_backward(rows(q), kc, vc, rows(o), l.contiguous(s), rows(dout), flash_options(opts, c),
                           GradMode::accumulate, g, s);
    else
      attn::flash_backward_few_keys(rows(q), kc, vc, rows(o), l, rows(dout), flash_options(opts, c), g, s);
  }
}

}  // namespace lctx::mixers
