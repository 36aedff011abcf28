#include "attn/block_select.h"

#include <algorithm>
#include <cstring>
#include <limits>

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

// The lists with their valid slots moved to the front (order kept) and the count of each.
struct Lists {
  std::vector<int32_t> slots;  // [B Hkv T][n]
  std::vector<int32_t> count;  // [B Hkv T]
};

Lists compact(const Dims& d, const KeyBlocks& kb) {
  const size_t lists = static_cast<size_t>(d.B * d.Hkv * d.T), n = static_cast<size_t>(d.n);
  Lists l{std::vector<int32_t>(lists * n, -1), std::vector<int32_t>(lists, 0)};
  for (size_t e = 0; e < lists; ++e)
    for (size_t i = 0; i < n; ++i)
      if (const int32_t x = kb.index[e * n + i]; x >= 0) l.slots[e * n + static_cast<size_t>(l.count[e]++)] = x;
  return l;
}

// Query blocks [t0, t1) of batch row b and KV head h: entries e = (b Hkv + h) T + t. In a full
// run every list has all n slots valid: no key is masked, so the folded call needs no document
// ids (and cuDNN can run it).
struct Run {
  int64_t b, h, t0, t1;
  bool full;
  int64_t entries() const { return t1 - t0; }
  int64_t first(const Dims& d) const { return (b * d.Hkv + h) * d.T + t0; }
};

// The runs: maximal ranges of full lists (kMinFull of them at least; shorter stretches join
// the masked runs, so that alternating lists do not make one call per list) or of the others,
// cut so that each has at most ~512 MB of fp32 scratch (the folded rows' or gathered keys'
// gradients).
std::vector<Run> runs(const Dims& d, const KeyBlocks& kb, const Lists& l) {
  constexpr int64_t kRunBytes = int64_t{1} << 29, kMinFull = 8;
  const int64_t per = 8 * d.D * std::max({kb.q_block * d.G, d.n * kb.k_block, int64_t{1}});
  const int64_t len = std::clamp<int64_t>(kRunBytes / per, 1, std::max<int64_t>(d.T, 1));
  std::vector<Run> r;
  std::vector<char> full(static_cast<size_t>(d.T));
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hkv; ++h) {
      for (int64_t t = 0; t < d.T; ++t)
        full[static_cast<size_t>(t)] = l.count[static_cast<size_t>((b * d.Hkv + h) * d.T + t)] == d.n;
      for (int64_t t = 0; t < d.T;) {  // demote short full stretches
        int64_t end = t + 1;
        while (end < d.T && full[static_cast<size_t>(end)] == full[static_cast<size_t>(t)]) ++end;
        if (full[static_cast<size_t>(t)] && end - t < kMinFull)
          std::fill(full.begin() + t, full.begin() + end, char{0});
        t = end;
      }
      for (int64_t t = 0; t < d.T;) {
        int64_t end = t + 1;
        while (end < d.T && end - t < len && full[static_cast<size_t>(end)] == full[static_cast<size_t>(t)]) ++end;
        r.push_back({b, h, t, end, full[static_cast<size_t>(t)] != 0});
        t = end;
      }
    }
  return r;
}

bool any_keys(const Lists& l, const Dims& d, const Run& r) {
  const auto c = l.count.begin() + r.first(d);
  return std::any_of(c, c + r.entries(), [](int32_t x) { return x > 0; });
}

// x [B, Sq, Hq, D] (q, o, dout, dq) seen as the run's rows [entries, q_block, G, D].
Tensor fold_rows(const Tensor& x, const Dims& d, const KeyBlocks& kb, const Run& r) {
  const Shape& st = x.strides();
  return x.as_strided({r.entries(), kb.q_block, d.G, d.D}, {kb.q_block * st[1], st[1], st[2], st[3]},
                      r.b * st[0] + r.t0 * kb.q_block * st[1] + r.h * d.G * st[2]);
}

// lse [B, Hq, Sq] seen as the run's [entries, q_block, G].
Tensor fold_lse(const Tensor& lse, const Dims& d, const KeyBlocks& kb, const Run& r) {
  const Shape& st = lse.strides();
  return lse.as_strided({r.entries(), kb.q_block, d.G}, {kb.q_block * st[2], st[2], st[1]},
                        r.b * st[0] + r.h * d.G * st[1] + r.t0 * kb.q_block * st[2]);
}

// The run's folded rows as one contiguous flash operand [entries, q_block G, 1, D].
Tensor folded(const Tensor& x, const Dims& d, const KeyBlocks& kb, const Run& r, Stream s) {
  return fold_rows(x, d, kb, r).contiguous(s).view({r.entries(), kb.q_block * d.G, 1, d.D});
}

Tensor upload(const int32_t* data, const Shape& shape, Device dev, Stream s) {
  Tensor t = Tensor::empty(shape, DType::i32);
  std::memcpy(t.data<int32_t>(), data, static_cast<size_t>(t.numel()) * sizeof(int32_t));
  return dev.is_cuda() ? t.to(dev, s) : t;
}

// The run's listed key blocks as flash keys, and the document ids that mask the empty slots.
struct Gathered {
  Tensor k, v, ids;
};

template <class T>
void gather_cpu(const Tensor& k, const Tensor& v, const int32_t* lists, const Dims& d, int64_t kb, const Run& r,
                Gathered& g) {
  const Shape& ks = k.strides();
  const Shape& vs = v.strides();
  const T* kp = k.data<T>();
  const T* vp = v.data<T>();
  T* ko = g.k.data<T>();
  T* vo = g.v.data<T>();
  int32_t* ids = g.ids.data<int32_t>();
  for (int64_t e = 0; e < r.entries(); ++e)
    for (int64_t i = 0; i < d.n; ++i) {
      const int32_t blk = lists[e * d.n + i];
      for (int64_t row = 0; row < kb; ++row) {
        const int64_t out = (e * d.n + i) * kb + row, pos = blk * kb + row;
        ids[out] = blk < 0 ? 1 : 0;
        for (int64_t c = 0; c < d.D; ++c) {
          ko[out * d.D + c] = blk < 0 ? T(0) : kp[r.b * ks[0] + pos * ks[1] + r.h * ks[2] + c * ks[3]];
          vo[out * d.D + c] = blk < 0 ? T(0) : vp[r.b * vs[0] + pos * vs[1] + r.h * vs[2] + c * vs[3]];
        }
      }
    }
}

Gathered gather_keys(const Tensor& k, const Tensor& v, const Lists& l, const Dims& d, const KeyBlocks& kb,
                     const Run& r, Stream s) {
  const Device dev = k.device();
  const int64_t rows = d.n * kb.k_block;
  Gathered g{Tensor::empty({r.entries(), rows, 1, d.D}, k.dtype(), dev),
             Tensor::empty({r.entries(), rows, 1, d.D}, k.dtype(), dev), Tensor::empty({r.entries(), rows}, DType::i32, dev)};
  const int32_t* lists = l.slots.data() + r.first(d) * d.n;
  if (dev.is_cuda()) {
#ifdef LCTX_HAVE_CUDA
    detail::block_rows_gather_cuda(k, v, upload(lists, {r.entries(), d.n}, dev, s), r.b, r.h, kb.k_block, g.k, g.v,
                                   g.ids, s);
#endif
  } else {
    LCTX_DISPATCH_CPU_FLOAT(k.dtype(), "block_select", [&] { gather_cpu<scalar_t>(k, v, lists, d, kb.k_block, r, g); });
  }
  return g;
}

// Per key block listed in the run, the (entry, slot) pairs that list it: sources e n + slot in
// ascending order (CSR over the blocks that appear).
struct Sources {
  std::vector<int32_t> targets, offsets, sources;
};

Sources sources(const Lists& l, const Dims& d, const KeyBlocks& kb, const Run& r) {
  std::vector<std::vector<int32_t>> by_block(static_cast<size_t>(d.Sk / kb.k_block));
  const int64_t e0 = r.first(d);
  for (int64_t e = 0; e < r.entries(); ++e)
    for (int64_t i = 0; i < l.count[static_cast<size_t>(e0 + e)]; ++i)
      by_block[static_cast<size_t>(l.slots[static_cast<size_t>((e0 + e) * d.n + i)])].push_back(
          static_cast<int32_t>(e * d.n + i));
  Sources src;
  src.offsets.push_back(0);
  for (size_t t = 0; t < by_block.size(); ++t) {
    if (by_block[t].empty()) continue;
    src.targets.push_back(static_cast<int32_t>(t));
    src.sources.insert(src.sources.end(), by_block[t].begin(), by_block[t].end());
    src.offsets.push_back(static_cast<int32_t>(src.sources.size()));
  }
  return src;
}

template <class T>
void scatter_cpu(const Tensor& dk_rows, const Tensor& dv_rows, const Sources& src, const Dims& d, int64_t kb,
                 const Run& r, Tensor& dk, Tensor& dv) {
  const T* gk = dk_rows.data<T>();
  const T* gv = dv_rows.data<T>();
  T* ok = dk.data<T>();
  T* ov = dv.data<T>();
  for (size_t u = 0; u < src.targets.size(); ++u)
    for (int64_t row = 0; row < kb; ++row) {
      const int64_t out = ((r.b * d.Sk + src.targets[u] * kb + row) * d.Hkv + r.h) * d.D;
      for (int64_t c = 0; c < d.D; ++c) {
        T ak = 0, av = 0;
        for (int32_t j = src.offsets[u]; j < src.offsets[u + 1]; ++j) {
          const int64_t e = src.sources[static_cast<size_t>(j)] / d.n, i = src.sources[static_cast<size_t>(j)] % d.n;
          const int64_t in = ((e * d.n + i) * kb + row) * d.D + c;
          ak += gk[in];
          av += gv[in];
        }
        ok[out + c] += ak;
        ov[out + c] += av;
      }
    }
}

void scatter_keys(const Tensor& dk_rows, const Tensor& dv_rows, const Lists& l, const Dims& d, const KeyBlocks& kb,
                  const Run& r, Tensor& dk, Tensor& dv, Stream s) {
  const Sources src = sources(l, d, kb, r);
  if (src.targets.empty()) return;
  const Device dev = dk.device();
  if (dev.is_cuda()) {
#ifdef LCTX_HAVE_CUDA
    const auto n = [](const std::vector<int32_t>& x) { return Shape{static_cast<int64_t>(x.size())}; };
    detail::block_rows_scatter_cuda(dk_rows, dv_rows, upload(src.targets.data(), n(src.targets), dev, s),
                                    upload(src.offsets.data(), n(src.offsets), dev, s),
                                    upload(src.sources.data(), n(src.sources), dev, s), r.b, r.h, kb.k_block, dk, dv,
                                    s);
#endif
  } else {
    LCTX_DISPATCH_CPU_FLOAT(dk.dtype(), "block_select_backward",
                            [&] { scatter_cpu<scalar_t>(dk_rows, dv_rows, src, d, kb.k_block, r, dk, dv); });
  }
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

// The folded call: all keys of a listed slot visible, empty slots another document (none in a
// full run).
FlashOptions fold_options(const FlashOptions& opts, const Gathered& g, const Run& r, const Dims& d,
                          const KeyBlocks& kb, Stream s) {
  FlashOptions f;
  f.softmax_scale = opts.softmax_scale;  // 0: 1/sqrt(D), the same D in the folded calls
  f.out_dtype = opts.out_dtype;
  f.backend = opts.backend;
  if (r.full) return f;
  f.q_doc_ids = Tensor::zeros({r.entries(), kb.q_block * d.G}, DType::i32, g.ids.device(), s);
  f.k_doc_ids = g.ids;
  return f;
}

}  // namespace

FlashOutput block_select_forward(const Tensor& q, const Tensor& k, const Tensor& v, const KeyBlocks& blocks,
                                 const FlashOptions& opts, Stream s) {
  const Dims d = check_call("block_select_forward", q, k, v, blocks, opts);
  const Device dev = q.device();
  const DType odt = opts.out_dtype == OutputDType::f32 ? wide_dtype(q.dtype()) : q.dtype();
  FlashOutput out{Tensor::empty(q.shape(), odt, dev), Tensor::empty({d.B, d.Hq, d.Sq}, wide_dtype(q.dtype()), dev)};
  const Lists l = compact(d, blocks);
  for (const Run& r : runs(d, blocks, l)) {
    Tensor o_r = fold_rows(out.o, d, blocks, r), lse_r = fold_lse(out.lse, d, blocks, r);
    if (!any_keys(l, d, r)) {  // o 0, lse -inf
      o_r.zero(s);
      lse_r.fill(-std::numeric_limits<double>::infinity(), s);
      continue;
    }
    const Gathered g = gather_keys(k, v, l, d, blocks, r, s);
    const FlashOutput fr = flash_forward(folded(q, d, blocks, r, s), g.k, g.v, fold_options(opts, g, r, d, blocks, s), s);
    o_r.copy_from(fr.o.view(o_r.shape()), s);
    lse_r.copy_from(fr.lse.view(lse_r.shape()), s);
  }
  return out;
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
  const Lists l = compact(d, blocks);
  for (const Run& r : runs(d, blocks, l)) {
    if (!any_keys(l, d, r)) continue;
    const Gathered g = gather_keys(k, v, l, d, blocks, r, s);
    const int64_t rows = blocks.q_block * d.G;
    FlashGrads gr{Tensor::empty({r.entries(), rows, 1, d.D}, wd, dev), Tensor::empty(g.k.shape(), wd, dev),
                  Tensor::empty(g.k.shape(), wd, dev)};
    const Tensor lse_r = fold_lse(lse, d, blocks, r).contiguous(s).view({r.entries(), 1, rows});
    flash_backward(folded(q, d, blocks, r, s), g.k, g.v, folded(o, d, blocks, r, s), lse_r,
                   folded(dout, d, blocks, r, s), fold_options(opts, g, r, d, blocks, s), GradMode::overwrite, gr, s);
    fold_rows(tq.work, d, blocks, r).add_from(gr.dq.view({r.entries(), blocks.q_block, d.G, d.D}), s);
    scatter_keys(gr.dk, gr.dv, l, d, blocks, r, tk.work, tv.work, s);
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
