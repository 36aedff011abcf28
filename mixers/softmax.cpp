#include "mixers/softmax.h"

#include <cmath>

#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ulysses.h"

namespace lctx::mixers {

std::string_view seq_parallel_name(SeqParallel s) {
  switch (s) {
    case SeqParallel::local: return "local";
    case SeqParallel::ring: return "ring";
    case SeqParallel::all_gather: return "all_gather";
    case SeqParallel::ulysses: return "ulysses";
    case SeqParallel::hybrid: return "hybrid";
  }
  return "?";
}

Tensor alibi_slopes(int64_t heads) {
  std::vector<double> sl;
  int64_t p2 = 1;
  while (p2 * 2 <= heads) p2 *= 2;
  for (int64_t h = 0; h < p2; ++h) sl.push_back(std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(p2)));
  for (int64_t h = 0; static_cast<int64_t>(sl.size()) < heads; ++h)
    sl.push_back(std::pow(2.0, -4.0 * static_cast<double>(2 * h + 1) / static_cast<double>(p2)));
  return Tensor::from_vector({heads}, sl, DType::f32);
}

namespace {

class SoftmaxMixer final : public Mixer {
 public:
  SoftmaxMixer(const SoftmaxOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout) {
    const HeadShape& s = o.core.shape;
    LCTX_CHECK(o.head_groups >= 1 && s.heads % o.head_groups == 0 && s.kv_heads % o.head_groups == 0,
               "softmax mixer: head_groups (", o.head_groups, ") must divide the heads (", s.heads, ") and KV heads (",
               s.kv_heads, ")");
    LCTX_CHECK(o.sp != SeqParallel::local || mesh.shape().sp() == 1, "softmax mixer: sp = local runs on one rank, but the ",
               "sequence-parallel group has ", mesh.shape().sp(), " ranks");
    LCTX_CHECK(o.sp != SeqParallel::ring || mesh.shape().ulysses == 1, "softmax mixer: sp = ring needs a Ulysses degree of 1 (got ",
               mesh.shape().ulysses, "); use hybrid");
  }

  std::vector<ParamSpec> param_specs() const override { return core_.param_specs(); }
  void bind(std::span<const Param> p) override { core_.bind(p); }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    if (pass != Pass::recompute) saved = std::make_unique<SoftmaxSaved>();
    auto& s = static_cast<SoftmaxSaved&>(*saved);
    core_.qkv_forward(s.qkv, in);
    if (pass != Pass::recompute) attend_forward(s, in);
    s.y = Tensor::empty({in.x.size(0), in.x.size(1), o_.core.shape.dim}, in.x.dtype(), in.x.device());
    core_.out_forward(s.y, s.o);
    Tensor y = s.y;
    if (pass == Pass::checkpoint) {  // keep o and lse only
      s.qkv = {};
      s.y = {};
    }
    return y;
  }

  void backward(Tensor& dx, const Tensor& dy, const Tokens& in, Saved& saved) override {
    auto& s = static_cast<SoftmaxSaved&>(saved);
    // The backward reads y no more: d(o) is written over it when it fits.
    Tensor d_o = s.y.numel() >= s.o.numel() ? s.y.view({-1}).slice(0, 0, s.o.numel()).view(s.o.shape())
                                            : Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
    core_.out_backward(d_o, dy, s.o);
    attn::FlashGrads g = attend_backward(d_o, s, in);
    core_.qkv_backward(dx, s.qkv, g.dq, g.dk, g.dv, in);
  }

  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const int64_t keys = o_.window > 0 ? std::min(o_.window, seq_len) : seq_len;
    return core_.flops_per_token() + 6.0 * static_cast<double>(s.heads * s.head_dim) * static_cast<double>(keys);
  }

 private:
  // The options of one group of heads. Packed documents: this rank's ids for the queries and
  // (each strategy gathers the other ranks' from them) the keys, with their host description.
  attn::FlashOptions flash_options(const HeadRange& h, const Tokens& in) {
    attn::FlashOptions f;
    f.softmax_scale = static_cast<float>(o_.softmax_scale);
    f.mask = attn::Mask::causal;
    if (o_.window > 0) f.window_left = o_.window - 1;
    f.backend = o_.backend;
    if (o_.core.position == Position::alibi) {
      const Device dev = in.x.device();
      if (!alibi_.defined() || alibi_.device() != dev) alibi_ = alibi_slopes(o_.core.shape.heads).to(dev);
      f.alibi_slopes = alibi_.slice(0, h.first, h.first + h.count);
    }
    if (in.doc_ids.defined()) {
      f.q_doc_ids = f.k_doc_ids = in.doc_ids;
      f.documents = in.documents;
    }
    return f;
  }

  // One group of heads through the configured strategy.
  attn::FlashOutput attend(const Tensor& q, const Tensor& k, const Tensor& v, const attn::FlashOptions& f) {
    switch (o_.sp) {
      case SeqParallel::local: return attn::flash_forward(q, k, v, f);
      case SeqParallel::ring:
      case SeqParallel::all_gather:
        if (mesh_.shape().ulysses == 1)
          return dist::ring_attention_forward(mesh_.ring(), layout_, q, k, v, f, ring_mode());
        [[fallthrough]];
      case SeqParallel::ulysses:
      case SeqParallel::hybrid:
        return dist::ulysses_attention_forward(mesh_.ulysses(), mesh_.ring(), layout_, q, k, v, f, ring_mode());
    }
    LCTX_FAIL("softmax mixer: unknown sequence-parallel strategy");
  }
  attn::FlashGrads attend_grad(const Tensor& dout, const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k,
                               const Tensor& v, const attn::FlashOptions& f) {
    switch (o_.sp) {
      case SeqParallel::local: return attn::flash_backward(q, k, v, o, lse, dout, f);
      case SeqParallel::ring:
      case SeqParallel::all_gather:
        if (mesh_.shape().ulysses == 1)
          return dist::ring_attention_backward(mesh_.ring(), layout_, q, k, v, o, lse, dout, f, ring_mode());
        [[fallthrough]];
      case SeqParallel::ulysses:
      case SeqParallel::hybrid:
        return dist::ulysses_attention_backward(mesh_.ulysses(), mesh_.ring(), layout_, q, k, v, o, lse, dout, f,
                                                ring_mode());
    }
    LCTX_FAIL("softmax mixer: unknown sequence-parallel strategy");
  }
  dist::RingMode ring_mode() const {
    return o_.sp == SeqParallel::all_gather ? dist::RingMode::all_gather : dist::RingMode::ring;
  }

  // Heads of group g of a [B, L, H, hd] tensor / of an lse [B, H, L] (views).
  Tensor heads(const Tensor& t, int64_t g) const {
    const int64_t h = t.size(2) / o_.head_groups;
    return t.slice(2, g * h, (g + 1) * h);
  }
  Tensor lse_heads(const Tensor& lse, int64_t g) const {
    const int64_t h = lse.size(1) / o_.head_groups;
    return lse.slice(1, g * h, (g + 1) * h);
  }
  HeadRange group(int64_t g) const {
    const int64_t h = o_.core.shape.heads / o_.head_groups;
    return {g * h, h};
  }

  void attend_forward(SoftmaxSaved& s, const Tokens& in) {
    const QkvActs& a = s.qkv;
    const Device dev = in.x.device();
    if (o_.head_groups == 1) {
      attn::FlashOutput r = attend(a.q, a.k, a.v, flash_options(group(0), in));
      s.o = r.o;
      s.lse = r.lse;
      return;
    }
    s.o = Tensor::empty(a.q.shape(), a.q.dtype(), dev);
    s.lse = Tensor::empty({a.q.size(0), a.q.size(2), a.q.size(1)}, DType::f32, dev);
    for (int64_t g = 0; g < o_.head_groups; ++g) {
      attn::FlashOutput r = attend(heads(a.q, g), heads(a.k, g), heads(a.v, g), flash_options(group(g), in));
      heads(s.o, g).copy_from(r.o);
      lse_heads(s.lse, g).copy_from(r.lse);
    }
  }

  attn::FlashGrads attend_backward(const Tensor& d_o, const SoftmaxSaved& s, const Tokens& in) {
    const QkvActs& a = s.qkv;
    const Device dev = a.q.device();
    if (o_.head_groups == 1) return attend_grad(d_o, s.o, s.lse, a.q, a.k, a.v, flash_options(group(0), in));
    attn::FlashGrads g{Tensor::empty(a.q.shape(), a.q.dtype(), dev), Tensor::empty(a.k.shape(), a.k.dtype(), dev),
                       Tensor::empty(a.v.shape(), a.v.dtype(), dev)};
    for (int64_t i = 0; i < o_.head_groups; ++i) {
      const attn::FlashGrads p = attend_grad(heads(d_o, i), heads(s.o, i), lse_heads(s.lse, i), heads(a.q, i),
                                             heads(a.k, i), heads(a.v, i), flash_options(group(i), in));
      heads(g.dq, i).copy_from(p.dq);
      heads(g.dk, i).copy_from(p.dk);
      heads(g.dv, i).copy_from(p.dv);
    }
    return g;
  }

  SoftmaxOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  Tensor alibi_;  // f32 [H] on the compute device (ALiBi only)
};

}  // namespace

std::unique_ptr<Mixer> make_softmax_mixer(const SoftmaxOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<SoftmaxMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
