#include "mixers/cross_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "attn/flash_few_keys.h"

namespace lctx::mixers {

namespace {

// One flash call: the query rows begin, begin + step, ... below end against the first `keys`
// memory rows, every pair visible (a run, step 1) or causal in block units (block memory). A
// batched call stacks `batch` such row sets, the i-th starting at begin + i (same count each),
// as the flash batch, one call per batch row of q.
struct Call {
  int64_t begin = 0, end = 0, step = 1, keys = 0;
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;  // causal: row i of the call sees key j iff k_offset + j <= q_offset + i
  int64_t batch = 1;
  int64_t rows() const { return (end - begin + step - 1) / step; }
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
// stepped by b) see rows c <= J - 1 (t < b - 1) or c <= J (t = b - 1), J their block, so per
// segment the offsets t < b - 1 are one batched causal call in block units and t = b - 1 one
// more, instead of ~2 calls per block (the stacked keys are copies: a call stacks at most
// kMaxStacked elements of them, so their memory stays bounded at any length). Empty when the
// rows are not of this form. row_elems: the elements of one memory row (Hkv hd).
constexpr int64_t kMaxStacked = int64_t{1} << 26;

std::vector<Call> block_calls(std::span<const int64_t> q_pos, std::span<const int64_t> k_pos, int64_t row_elems) {
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
    const int64_t first = j0 == 0 ? 1 : 0;  // block 0's first b - 1 tokens see no row
    const int64_t early_keys = std::min(N, j0 + blocks - 1), last_keys = std::min(N, j0 + blocks);
    if (b > 1 && first < blocks && early_keys > 0) {  // offsets t < b - 1
      const int64_t stack = std::clamp<int64_t>(kMaxStacked / std::max<int64_t>(early_keys * row_elems, 1), 1, b - 1);
      for (int64_t t = 0; t < b - 1; t += stack)
        calls.push_back({.begin = r0 + first * b + t,
                         .end = r1,
                         .step = b,
                         .keys = early_keys,
                         .causal = true,
                         .q_offset = j0 + first,
                         .k_offset = 1,
                         .batch = std::min(stack, b - 1 - t)});
    }
    if (last_keys > 0)  // offset b - 1
      calls.push_back({.begin = r0 + b - 1, .end = r1, .step = b, .keys = last_keys, .causal = true, .q_offset = j0});
    r0 = r1;
  }
  return calls;
}

// The flash calls of a form: a batched call is one per batch row of q.
int64_t call_count(const Call& c, int64_t B) { return c.batch == 1 ? 1 : B; }
int64_t call_count(std::span<const Call> calls, int64_t B) {
  int64_t n = 0;
  for (const Call& c : calls) n += call_count(c, B);
  return n;
}

// The fewer flash calls of the two forms.
std::vector<Call> flash_calls(const Tensor& q, std::span<const int64_t> q_pos, const Tensor& k,
                              std::span<const int64_t> k_pos) {
  std::vector<Call> runs = visible_runs(q, q_pos, k, k_pos);
  std::vector<Call> blocks = block_calls(q_pos, k_pos, k.size(2) * k.size(3));
  const int64_t B = q.size(0);
  return !blocks.empty() && call_count(blocks, B) < call_count(runs, B) ? blocks : runs;
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

// The call's query rows of x [B, L, ...] (o, dout, dq alike): of all batch rows ([B, rows, ...])
// or, batched, of batch row `row` alone, its entries stacked ([batch, rows, ...]).
Tensor call_rows(const Tensor& x, const Call& c, int64_t row) {
  if (c.batch == 1) return x.slice(1, c.begin, c.end, c.step);
  Shape shape = x.shape(), st = x.strides();
  shape[0] = c.batch;
  shape[1] = c.rows();
  const int64_t offset = row * st[0] + c.begin * st[1];
  st[0] = st[1];
  st[1] *= c.step;
  return x.as_strided(shape, st, offset);
}

// Their log-sum-exps in lse [B, H, L].
Tensor call_lse(const Tensor& lse, const Call& c, int64_t row) {
  if (c.batch == 1) return lse.slice(2, c.begin, c.end, c.step);
  const Shape& st = lse.strides();
  return lse.as_strided({c.batch, lse.size(1), c.rows()}, {st[2], st[1], c.step * st[2]},
                        row * st[0] + c.begin * st[2]);
}

// The memory rows they see (k or v [B, N, Hkv, hd]), repeated for each entry of a batched call.
Tensor call_keys(const Tensor& k, const Call& c, int64_t row, Stream s) {
  if (c.batch == 1) return k.slice(1, 0, c.keys);
  const Shape& st = k.strides();
  return k.as_strided({c.batch, c.keys, k.size(2), k.size(3)}, {0, st[1], st[2], st[3]}, row * st[0]).contiguous(s);
}

// A batched call's key gradients [batch, keys, ...] summed over the batch into into's row (a
// fixed pairwise order).
void add_batch_sum(const Tensor& into, Tensor g, int64_t row, int64_t keys, Stream s) {
  for (int64_t n = g.size(0); n > 1;) {
    const int64_t h = n / 2;
    g.slice(0, 0, h).add_from(g.slice(0, n - h, n), s);
    n -= h;
  }
  Tensor dst = into.slice(0, row, row + 1).slice(1, 0, keys);
  dst.add_from(g.slice(0, 0, 1), s);
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
  for (const Call& c : calls)
    for (int64_t row = 0; row < call_count(c, B); ++row) {
      const attn::FlashOutput part = attn::flash_forward(call_rows(q, c, row), call_keys(k, c, row, s),
                                                         call_keys(v, c, row, s), flash_options(opts, c), s);
      call_rows(out.o, c, row).copy_from(part.o, s);
      call_lse(out.lse, c, row).copy_from(part.lse, s);
    }
  return out;
}

void cross_attention_backward(const Tensor& q, std::span<const int64_t> q_positions, const Tensor& k, const Tensor& v,
                              std::span<const int64_t> k_positions, const Tensor& o, const Tensor& lse,
                              const Tensor& dout, const CrossAttentionOptions& opts, const attn::FlashGrads& into,
                              Stream s) {
  const int64_t B = q.size(0);
  for (const Call& c : flash_calls(q, q_positions, k, k_positions))
    for (int64_t row = 0; row < call_count(c, B); ++row) {
      const auto rows = [&](const Tensor& t) { return call_rows(t, c, row); };
      const Tensor l = call_lse(lse, c, row), kc = call_keys(k, c, row, s), vc = call_keys(v, c, row, s);
      if (!c.causal) {
        attn::flash_backward_few_keys(rows(q), kc, vc, rows(o), l, rows(dout), flash_options(opts, c),
                                      {rows(into.dq), into.dk.slice(1, 0, c.keys), into.dv.slice(1, 0, c.keys)}, s);
        continue;
      }
      // flash's lse rows have stride 1; a batched call's key gradients go to scratch first
      const bool batched = c.batch > 1;
      const attn::FlashGrads g{rows(into.dq),
                               batched ? Tensor::zeros(kc.shape(), into.dk.dtype(), kc.device(), s)
                                       : into.dk.slice(1, 0, c.keys),
                               batched ? Tensor::zeros(kc.shape(), into.dv.dtype(), kc.device(), s)
                                       : into.dv.slice(1, 0, c.keys)};
      attn::flash_backward(rows(q), kc, vc, rows(o), l.contiguous(s), rows(dout), flash_options(opts, c),
                           GradMode::accumulate, g, s);
      if (batched) {
        add_batch_sum(into.dk, g.dk, row, c.keys, s);
        add_batch_sum(into.dv, g.dv, row, c.keys, s);
      }
    }
}

}  // namespace lctx::mixers
