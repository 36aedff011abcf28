#include "attn/block_select.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>

#include "ops/embedding.h"

namespace lctx::attn {

namespace {

struct Dims {
  int64_t B, Sq, Hq, D, Sk, Hkv, G, T, n;
};

Dims check_call(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const KeyBlocks& kb,
                const FlashOptions& opts) {
  LCTX_CHECK(q.dim() == 4 && k.dim() == 4 && v.shape() == k.shape(), op, ": q [B, Sq, Hq, D], k, v [B, Sk, Hkv, D]",
             " expected, got q ", q.str(), ", k ", k.str(), ", v ", v.str());
  const Dims d{q.size(0), q.size(1), q.size(2), q.size(3), k.size(1), k.size(2), 0, 0, kb.per_query};
  LCTX_CHECK(k.size(0) == d.B && k.size(3) == d.D && d.Hkv >= 1 && d.Hq % d.Hkv == 0, op, ": k ", k.str(),
             " does not match q ", q.str(), " (same batch and head_dim, Hq a multiple of Hkv)");
  LCTX_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype() && k.device() == q.device() && v.device() == q.device(),
             op, ": q, k, v must share dtype and device, got ", q.str(), ", ", k.str(), ", ", v.str());
  LCTX_CHECK(opts.mask == Mask::none && opts.window_left < 0 && opts.window_right < 0 && opts.q_offset == 0 &&
                 opts.k_offset == 0 && !opts.alibi_slopes.defined() && !opts.q_doc_ids.defined() && !opts.documents &&
                 !opts.block_mask && !opts.tile_counter.defined(),
             op, ": the key lists are the whole rule (no mask, window, offsets, documents, ALiBi, block mask or ",
             "tile counter)");
  LCTX_CHECK(kb.q_block >= 1 && kb.k_block >= 1 && kb.per_query >= 0, op, ": q_block ", kb.q_block, " and k_block ",
             kb.k_block, " must be >= 1, per_query ", kb.per_query, " >= 0");
  LCTX_CHECK(d.Sq % kb.q_block == 0, op, ": Sq ", d.Sq, " of q ", q.str(), " is not a multiple of q_block ",
             kb.q_block);
  LCTX_CHECK(d.B * d.Sq * d.Hq < std::numeric_limits<int32_t>::max() &&
                 d.B * d.Sk * d.Hkv < std::numeric_limits<int32_t>::max(),
             op, ": q ", q.str(), " or k ", k.str(), " has 2^31 rows or more");
  Dims r = d;
  r.G = d.Hq / d.Hkv;
  r.T = d.Sq / kb.q_block;
  const int64_t want = d.B * d.Hkv * r.T * d.n, blocks = d.Sk / kb.k_block;
  LCTX_CHECK(static_cast<int64_t>(kb.index.size()) == want, op, ": key_blocks.index has ", kb.index.size(),
             " entries, expected B x Hkv x Sq / q_block x per_query = ", d.B, " x ", d.Hkv, " x ", r.T, " x ", d.n);
  for (int64_t l = 0; l < want / std::max<int64_t>(d.n, 1); ++l) {
    const int32_t* list = kb.index.data() + l * d.n;
    for (int64_t i = 0; i < d.n; ++i) {
      LCTX_CHECK(list[i] >= -1 && list[i] < blocks, op, ": key block ", list[i], " (list ", l, ", slot ", i,
                 ") outside [0, ", blocks, ") whole blocks of ", kb.k_block, " rows in Sk ", d.Sk, " (or -1)");
      for (int64_t j = 0; j < i; ++j)
        LCTX_CHECK(list[i] < 0 || list[j] != list[i], op, ": key block ", list[i], " listed twice (list ", l, ")");
    }
  }
  return r;
}

// The entries (b, h, t) with c listed blocks: the flat rows of their queries, log-sum-exps and keys.
struct Group {
  int64_t n = 0;                  // entries
  std::vector<int32_t> q_rows;    // [n, q_block, G]: rows of q as [B Sq Hq, D]
  std::vector<int32_t> lse_rows;  // [n, G, q_block]: rows of lse as [B Hq Sq, 1]
  std::vector<int32_t> k_rows;    // [n, c k_block]: rows of k as [B Sk Hkv, D]
};

std::map<int64_t, Group> plan(const Dims& d, const KeyBlocks& kb) {
  std::map<int64_t, Group> groups;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hkv; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int32_t* list = kb.index.data() + ((b * d.Hkv + h) * d.T + t) * d.n;
        const int64_t c = std::count_if(list, list + d.n, [](int32_t x) { return x >= 0; });
        if (c == 0) continue;
        Group& g = groups[c];
        ++g.n;
        for (int64_t r = 0; r < kb.q_block; ++r)
          for (int64_t j = 0; j < d.G; ++j)
            g.q_rows.push_back(static_cast<int32_t>((b * d.Sq + t * kb.q_block + r) * d.Hq + h * d.G + j));
        for (int64_t j = 0; j < d.G; ++j)
          for (int64_t r = 0; r < kb.q_block; ++r)
            g.lse_rows.push_back(static_cast<int32_t>((b * d.Hq + h * d.G + j) * d.Sq + t * kb.q_block + r));
        for (int64_t i = 0; i < d.n; ++i)
          if (list[i] >= 0)
            for (int64_t r = 0; r < kb.k_block; ++r)
              g.k_rows.push_back(static_cast<int32_t>((b * d.Sk + list[i] * kb.k_block + r) * d.Hkv + h));
      }
  return groups;
}

Tensor upload(const std::vector<int32_t>& rows, Device dev, Stream s) {
  Tensor t = Tensor::empty({static_cast<int64_t>(rows.size())}, DType::i32);
  std::memcpy(t.data<int32_t>(), rows.data(), rows.size() * sizeof(int32_t));
  return dev.is_cuda() ? t.to(dev, s) : t;
}

// table [V, W] rows at ids, as `shape` (numel = ids x W).
Tensor gather(const Tensor& table, const Tensor& ids, const Shape& shape, Stream s) {
  Tensor out = Tensor::empty({ids.size(0), table.size(1)}, table.dtype(), table.device());
  ops::embedding_forward(out, ids, table, s);
  return out.view(shape);
}

// A gradient target: `into` itself when usable in place, else a contiguous scratch added or
// copied into it at the end.
struct Target {
  Tensor out, work;
  void finish(GradMode mode, Stream s) {
    if (work.raw() == out.raw() && work.strides() == out.strides()) return;
    if (mode == GradMode::overwrite)
      out.copy_from(work, s);
    else
      out.add_from(work, s);
  }
};

Target target(const char* op, const char* name, const Tensor& into, const Shape& shape, DType wd, Device dev,
              GradMode mode, Stream s) {
  if (!into.defined()) {
    LCTX_CHECK(mode == GradMode::overwrite, op, ": GradMode::accumulate needs every gradient of `into` (", name,
               " is undefined)");
    Tensor t = Tensor::zeros(shape, wd, dev, s);
    return {t, t};
  }
  LCTX_CHECK(into.shape() == shape && into.dtype() == wd && into.device() == dev, op, ": ", name, " ", into.str(),
             " must be ", dtype_name(wd), " of the input's shape");
  if (!into.is_contiguous()) return {into, Tensor::zeros(shape, wd, dev, s)};
  Tensor t = into;
  if (mode == GradMode::overwrite) t.zero(s);
  return {into, t};
}

FlashOptions fold_options(const FlashOptions& opts) {
  FlashOptions f;
  f.softmax_scale = opts.softmax_scale;  // 0: 1/sqrt(D), the same D in the folded calls
  f.out_dtype = opts.out_dtype;
  f.backend = opts.backend;
  return f;
}

}  // namespace

FlashOutput block_select_forward(const Tensor& q, const Tensor& k, const Tensor& v, const KeyBlocks& blocks,
                                 const FlashOptions& opts, Stream s) {
  const char* op = "block_select_forward";
  const Dims d = check_call(op, q, k, v, blocks, opts);
  const Device dev = q.device();
  const DType odt = opts.out_dtype == OutputDType::f32 ? wide_dtype(q.dtype()) : q.dtype(), ldt = wide_dtype(q.dtype());
  const FlashOptions f = fold_options(opts);
  const Tensor qt = q.contiguous(s).view({d.B * d.Sq * d.Hq, d.D});
  const Tensor kt = k.contiguous(s).view({d.B * d.Sk * d.Hkv, d.D}), vt = v.contiguous(s).view(kt.shape());
  const std::map<int64_t, Group> groups = plan(d, blocks);
  int64_t m = 0;
  for (const auto& [c, g] : groups) m += static_cast<int64_t>(g.q_rows.size());
  // Every entry's rows, then one row for the query rows without keys: o 0, lse -inf.
  Tensor o_table = Tensor::empty({m + 1, d.D}, odt, dev), l_table = Tensor::empty({m + 1, 1}, ldt, dev);
  o_table.slice(0, m, m + 1).zero(s);
  l_table.slice(0, m, m + 1).fill(-std::numeric_limits<double>::infinity(), s);
  std::vector<int32_t> o_inv(static_cast<size_t>(d.B * d.Sq * d.Hq), static_cast<int32_t>(m));
  std::vector<int32_t> l_inv(o_inv.size(), static_cast<int32_t>(m));
  int64_t at = 0;
  for (const auto& [c, g] : groups) {
    const int64_t rows = static_cast<int64_t>(g.q_rows.size()), keys = c * blocks.k_block;
    const Tensor qi = upload(g.q_rows, dev, s), ki = upload(g.k_rows, dev, s);
    const Tensor qf = gather(qt, qi, {g.n, blocks.q_block, d.G, d.D}, s);
    const Tensor kf = gather(kt, ki, {g.n, keys, 1, d.D}, s), vf = gather(vt, ki, {g.n, keys, 1, d.D}, s);
    const FlashOutput r = flash_forward(qf, kf, vf, f, s);
    o_table.slice(0, at, at + rows).copy_from(r.o.view({rows, d.D}), s);
    l_table.slice(0, at, at + rows).copy_from(r.lse.view({rows, 1}), s);
    for (int64_t i = 0; i < rows; ++i) {
      o_inv[static_cast<size_t>(g.q_rows[static_cast<size_t>(i)])] = static_cast<int32_t>(at + i);
      l_inv[static_cast<size_t>(g.lse_rows[static_cast<size_t>(i)])] = static_cast<int32_t>(at + i);
    }
    at += rows;
  }
  return {gather(o_table, upload(o_inv, dev, s), {d.B, d.Sq, d.Hq, d.D}, s),
          gather(l_table, upload(l_inv, dev, s), {d.B, d.Hq, d.Sq}, s)};
}

FlashGrads block_select_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                 const Tensor& dout, const KeyBlocks& blocks, const FlashOptions& opts, GradMode mode,
                                 FlashGrads into, Stream s) {
  const char* op = "block_select_backward";
  const Dims d = check_call(op, q, k, v, blocks, opts);
  LCTX_CHECK(o.shape() == q.shape() && dout.shape() == q.shape() && lse.shape() == Shape({d.B, d.Hq, d.Sq}), op, ": o ",
             o.str(), " and dout ", dout.str(), " must be q's shape ", q.str(), ", lse ", lse.str(), " [B, Hq, Sq]");
  const Device dev = q.device();
  const DType wd = wide_dtype(q.dtype());
  Target tq = target(op, "dq", into.dq, q.shape(), wd, dev, mode, s);
  Target tk = target(op, "dk", into.dk, k.shape(), wd, dev, mode, s);
  Target tv = target(op, "dv", into.dv, k.shape(), wd, dev, mode, s);
  const FlashOptions f = fold_options(opts);
  const int64_t nq = d.B * d.Sq * d.Hq;
  const Tensor qt = q.contiguous(s).view({nq, d.D}), ot = o.contiguous(s).view({nq, d.D});
  const Tensor dot = dout.contiguous(s).view({nq, d.D}), lt = lse.contiguous(s).view({nq, 1});
  const Tensor kt = k.contiguous(s).view({d.B * d.Sk * d.Hkv, d.D}), vt = v.contiguous(s).view(kt.shape());
  Tensor dqt = tq.work.view(qt.shape()), dkt = tk.work.view(kt.shape()), dvt = tv.work.view(kt.shape());
  for (const auto& [c, g] : plan(d, blocks)) {
    const int64_t rows = static_cast<int64_t>(g.q_rows.size()), keys = c * blocks.k_block;
    const Tensor qi = upload(g.q_rows, dev, s), li = upload(g.lse_rows, dev, s), ki = upload(g.k_rows, dev, s);
    const Shape qs{g.n, blocks.q_block, d.G, d.D}, ks{g.n, keys, 1, d.D};
    const Tensor qf = gather(qt, qi, qs, s), of = gather(ot, qi, qs, s), dof = gather(dot, qi, qs, s);
    const Tensor lf = gather(lt, li, {g.n, d.G, blocks.q_block}, s);
    const Tensor kf = gather(kt, ki, ks, s), vf = gather(vt, ki, ks, s);
    FlashGrads r{Tensor::empty(qs, wd, dev), Tensor::empty(ks, wd, dev), Tensor::empty(ks, wd, dev)};
    flash_backward(qf, kf, vf, of, lf, dof, f, GradMode::overwrite, r, s);
    ops::embedding_backward(dqt, qi, r.dq.view({rows, d.D}), GradMode::accumulate, s);
    ops::embedding_backward(dkt, ki, r.dk.view({g.n * keys, d.D}), GradMode::accumulate, s);
    ops::embedding_backward(dvt, ki, r.dv.view({g.n * keys, d.D}), GradMode::accumulate, s);
  }
  tq.finish(mode, s);
  tk.finish(mode, s);
  tv.finish(mode, s);
  return {tq.out, tk.out, tv.out};
}

std::vector<int64_t> draw_distinct(uint64_t seed, int64_t stream, int64_t n, int64_t count) {
  std::vector<int64_t> out;
  if (n <= 0 || count <= 0) return out;
  const int64_t want = std::min(count, n);
  std::vector<bool> taken(static_cast<size_t>(n), false);
  uint64_t x = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(stream + 1));
  while (static_cast<int64_t>(out.size()) < want) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    const int64_t i = static_cast<int64_t>((z ^ (z >> 31)) % static_cast<uint64_t>(n));
    if (!taken[static_cast<size_t>(i)]) {
      taken[static_cast<size_t>(i)] = true;
      out.push_back(i);
    }
  }
  return out;
}

}  // namespace lctx::attn
