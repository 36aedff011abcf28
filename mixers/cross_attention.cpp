#include "mixers/cross_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "attn/flash_few_keys.h"

namespace lctx::mixers {

namespace {

struct Run {  // query rows [begin, end) see the first `keys` memory rows
  int64_t begin = 0, end = 0, keys = 0;
};

std::vector<Run> visible_runs(const Tensor& q, std::span<const int64_t> q_pos, const Tensor& k,
                              std::span<const int64_t> k_pos) {
  const int64_t L = q.size(1), N = k.size(1);
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4, "cross_attention: q ", q.str(), " and k ", k.str(),
             " must be [B, rows, heads, head_dim]");
  if (k_pos.empty()) return N > 0 && L > 0 ? std::vector<Run>{{0, L, N}} : std::vector<Run>{};
  LCTX_CHECK(static_cast<int64_t>(k_pos.size()) == N, "cross_attention: ", k_pos.size(), " key positions for k ",
             k.str());
  LCTX_CHECK(static_cast<int64_t>(q_pos.size()) == L, "cross_attention: ", q_pos.size(), " query positions for q ",
             q.str(), " (key rows with positions need the queries' positions)");
  LCTX_CHECK(std::is_sorted(k_pos.begin(), k_pos.end()), "cross_attention: key positions must be non-decreasing");
  std::vector<Run> runs;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t n = std::upper_bound(k_pos.begin(), k_pos.end(), q_pos[static_cast<size_t>(i)]) - k_pos.begin();
    if (!runs.empty() && runs.back().end == i && runs.back().keys == n)
      runs.back().end = i + 1;
    else
      runs.push_back({i, i + 1, n});
  }
  std::erase_if(runs, [](const Run& r) { return r.keys == 0; });
  return runs;
}

attn::FlashOptions flash_options(const CrossAttentionOptions& o) {
  attn::FlashOptions f;
  f.softmax_scale = o.softmax_scale;
  f.backend = o.backend;
  f.out_dtype = attn::OutputDType::f32;
  return f;
}

}  // namespace

attn::FlashOutput cross_attention_forward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k,
                                          const Tensor& v, std::span<const int64_t> k_positions,
                                          const CrossAttentionOptions& opts, Stream s) {
  const std::vector<Run> runs = visible_runs(q, q_positions, k, k_positions);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  const attn::FlashOptions f = flash_options(opts);
  if (runs.size() == 1 && runs[0].begin == 0 && runs[0].end == L && runs[0].keys == k.size(1))
    return attn::flash_forward(q, k, v, f, s);
  const DType wd = wide_dtype(q.dtype());
  attn::FlashOutput out{Tensor::zeros(q.shape(), wd, q.device(), s),
                        Tensor::full({B, H, L}, -std::numeric_limits<double>::infinity(), wd, q.device(), s)};
  for (const Run& r : runs) {
    const attn::FlashOutput part =
        attn::flash_forward(q.slice(1, r.begin, r.end), k.slice(1, 0, r.keys), v.slice(1, 0, r.keys), f, s);
    out.o.slice(1, r.begin, r.end).copy_from(part.o, s);
    out.lse.slice(2, r.begin, r.end).copy_from(part.lse, s);
  }
  return out;
}

void cross_attention_backward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k, const Tensor& v,
                              std::span<const int64_t> k_positions, const Tensor& o, const Tensor& lse,
                              const Tensor& dout, const CrossAttentionOptions& opts, const attn::FlashGrads& into,
                              Stream s) {
  const attn::FlashOptions f = flash_options(opts);
  for (const Run& r : visible_runs(q, q_positions, k, k_positions)) {
    const int64_t b = r.begin, e = r.end, n = r.keys;
    attn::flash_backward_few_keys(q.slice(1, b, e), k.slice(1, 0, n), v.slice(1, 0, n), o.slice(1, b, e),
                                  lse.slice(2, b, e), dout.slice(1, b, e), f,
                                  {into.dq.slice(1, b, e), into.dk.slice(1, 0, n), into.dv.slice(1, 0, n)}, s);
  }
}

}  // namespace lctx::mixers
