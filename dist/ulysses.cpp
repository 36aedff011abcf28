#include "dist/ulysses.h"

#include <map>
#include <vector>

#include "dist/ring_kernels.h"

namespace lctx::dist {

namespace {

// Which heads rank j of the Ulysses group gets: [first[j], first[j] + count).
struct HeadSplit {
  std::vector<int64_t> first;
  int64_t count = 0;
  int64_t total = 0;
};

HeadSplit split_heads(const char* op, const char* what, int64_t heads, int U, bool allow_replication) {
  HeadSplit h;
  h.total = heads;
  if (heads % U == 0) {
    h.count = heads / U;
    for (int j = 0; j < U; ++j) h.first.push_back(j * h.count);
    return h;
  }
  LCTX_CHECK(allow_replication && U % heads == 0, op, ": the Ulysses degree ", U, " must divide the number of ", what,
             " heads ", heads,
             allow_replication ? " or be a multiple of it (KV heads are then replicated)" : "",
             "; use a smaller Ulysses degree and a larger ring");
  h.count = 1;
  for (int j = 0; j < U; ++j) h.first.push_back(int64_t{j} * heads / U);
  return h;
}

// [.., L at seq_dim, H at head_dim, ..] sequence-sharded -> [.., U*L, count, ..] head-sharded.
Tensor seq_to_head(Comm& u, const Tensor& x, int seq_dim, int head_dim, const HeadSplit& hs, Stream s) {
  const int U = u.size();
  const int64_t L = x.size(seq_dim);
  Shape blk = x.shape();
  blk[head_dim] = hs.count;
  Shape packed = blk;
  packed.insert(packed.begin(), U);
  Tensor send = Tensor::empty(packed, x.dtype(), x.device()), recv = Tensor::empty(packed, x.dtype(), x.device());
  for (int j = 0; j < U; ++j) block_of(send, j).copy_from(x.slice(head_dim, hs.first[j], hs.first[j] + hs.count), s);
  u.all_to_all(send, recv, s);
  Shape out_shape = blk;
  out_shape[seq_dim] = U * L;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  for (int i = 0; i < U; ++i) out.slice(seq_dim, i * L, (i + 1) * L).copy_from(block_of(recv, i), s);
  return out;
}

// Inverse of seq_to_head into dtype `dt`; replicated heads (same first[]) are summed in rank
// order (y must then be f32/f64).
Tensor head_to_seq(Comm& u, const Tensor& y, int seq_dim, int head_dim, const HeadSplit& hs, DType dt, Stream s) {
  const int U = u.size();
  const int64_t L = y.size(seq_dim) / U;
  Shape blk = y.shape();
  blk[seq_dim] = L;
  Shape packed = blk;
  packed.insert(packed.begin(), U);
  Tensor send = Tensor::empty(packed, y.dtype(), y.device()), recv = Tensor::empty(packed, y.dtype(), y.device());
  for (int j = 0; j < U; ++j) block_of(send, j).copy_from(y.slice(seq_dim, j * L, (j + 1) * L), s);
  u.all_to_all(send, recv, s);
  Shape out_shape = blk;
  out_shape[head_dim] = hs.total;
  Tensor out = Tensor::empty(out_shape, dt, y.device());
  std::map<int64_t, std::vector<int>> owners;  // first head -> ranks that computed it
  for (int i = 0; i < U; ++i) owners[hs.first[i]].push_back(i);
  for (const auto& [first, ranks] : owners) {
    Tensor sum = block_of(recv, ranks[0]);
    if (ranks.size() > 1) {
      sum = sum.clone(s);
      for (size_t n = 1; n < ranks.size(); ++n) sum.add_from(block_of(recv, ranks[n]), s);
    }
    out.slice(head_dim, first, first + hs.count).copy_from(sum, s);
  }
  return out;
}

// The ring rank's document ids: the Ulysses group's local ids [B, L] side by side.
Tensor gather_docs(Comm& u, const Tensor& docs, Stream s) {
  const int64_t B = docs.size(0), L = docs.size(1);
  Tensor g = Tensor::empty({u.size(), B, L}, DType::i32, docs.device());
  u.all_gather(docs.contiguous(s), g, s);
  Tensor out = Tensor::empty({B, u.size() * L}, DType::i32, docs.device());
  for (int i = 0; i < u.size(); ++i) out.slice(1, i * L, (i + 1) * L).copy_from(block_of(g, i), s);
  return out;
}

struct UlyssesCall {
  HeadSplit qs, ks;
  attn::FlashOptions opts;  // for the head-sharded problem

  UlyssesCall(const char* op, Comm& u, Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
              const attn::FlashOptions& o, Stream s) {
    LCTX_CHECK(u.size() == layout.ulysses_size() && ring.size() == layout.ring_size(), op, ": layout ", layout.str(),
               " does not match communicators of ulysses ", u.size(), " x ring ", ring.size());
    LCTX_CHECK(q.dim() == 4 && k.dim() == 4 && q.size(1) == layout.local_len() && k.size(1) == layout.local_len(), op,
               ": q ", q.str(), " and k ", k.str(), " must be [B, ", layout.local_len(), ", H, D] (", layout.str(), ")");
    qs = split_heads(op, "query", q.size(2), u.size(), false);
    ks = split_heads(op, "KV", k.size(2), u.size(), true);
    opts = o;
    if (o.alibi_slopes.defined()) {
      const int64_t f = qs.first[u.rank()];
      opts.alibi_slopes = o.alibi_slopes.slice(0, f, f + qs.count);
    }
    if (o.k_doc_ids.defined()) {
      LCTX_CHECK(o.q_doc_ids.defined(), op, ": give both q_doc_ids and k_doc_ids or neither");
      opts.q_doc_ids = opts.k_doc_ids = gather_docs(u, o.k_doc_ids, s);
    }
  }
};

}  // namespace

attn::FlashOutput ulysses_attention_forward(Comm& u, Comm& ring, const Layout& layout, const Tensor& q,
                                            const Tensor& k, const Tensor& v, const attn::FlashOptions& opts,
                                            RingMode mode, Stream s) {
  UlyssesCall c("ulysses_attention_forward", u, ring, layout, q, k, opts, s);
  attn::FlashOutput h = ring_attention_forward(ring, layout, seq_to_head(u, q, 1, 2, c.qs, s),
                                               seq_to_head(u, k, 1, 2, c.ks, s), seq_to_head(u, v, 1, 2, c.ks, s),
                                               c.opts, mode, s);
  return {head_to_seq(u, h.o, 1, 2, c.qs, h.o.dtype(), s), head_to_seq(u, h.lse, 2, 1, c.qs, h.lse.dtype(), s)};
}

attn::FlashGrads ulysses_attention_backward(Comm& u, Comm& ring, const Layout& layout, const Tensor& q,
                                            const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                            const Tensor& dout, const attn::FlashOptions& opts, RingMode mode,
                                            Stream s) {
  UlyssesCall c("ulysses_attention_backward", u, ring, layout, q, k, opts, s);
  // Replicated KV heads come back as partial gradients to sum: in fp32; otherwise every
  // gradient travels in the input dtype (half the bytes).
  const bool replicated = c.ks.count * u.size() > c.ks.total;
  attn::FlashGrads g = ring_attention_backward(
      ring, layout, seq_to_head(u, q, 1, 2, c.qs, s), seq_to_head(u, k, 1, 2, c.ks, s),
      seq_to_head(u, v, 1, 2, c.ks, s), seq_to_head(u, o, 1, 2, c.qs, s), seq_to_head(u, lse, 2, 1, c.qs, s),
      seq_to_head(u, dout, 1, 2, c.qs, s), c.opts, mode,
      replicated ? attn::OutputDType::f32 : attn::OutputDType::input, s);
  return {head_to_seq(u, g.dq, 1, 2, c.qs, q.dtype(), s), head_to_seq(u, g.dk, 1, 2, c.ks, k.dtype(), s),
          head_to_seq(u, g.dv, 1, 2, c.ks, v.dtype(), s)};
}

}  // namespace lctx::dist
