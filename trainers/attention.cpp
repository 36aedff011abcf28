#include "trainers/attention.h"

#include <algorithm>

#include "attn/flash.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/ring_attention.h"
#include "dist/ulysses.h"

namespace lctx::train {

namespace {

attn::FlashOptions causal_options(const Config& cfg, const Tensor& alibi) {
  attn::FlashOptions o;
  o.softmax_scale = static_cast<float>(cfg.attention.softmax_scale);
  o.mask = attn::Mask::causal;
  o.alibi_slopes = alibi;
  o.backend = attn::parse_attn_backend(cfg.attention.backend);
  return o;
}

// Whole-sequence causal flash attention on one rank (sp = 1: positions are 0..S-1).
class FlashAttention final : public Attention {
 public:
  explicit FlashAttention(const Config& cfg) : cfg_(cfg) {}
  void forward(AttnSaved& out, const Tensor& q, const Tensor& k, const Tensor& v) override {
    attn::FlashOutput r = attn::flash_forward(q, k, v, causal_options(cfg_, alibi_));
    out.o = r.o;
    out.lse = r.lse;
  }
  AttnGrads backward(const Tensor& dout, const AttnSaved& s, const Tensor& q, const Tensor& k,
                     const Tensor& v) override {
    attn::FlashGrads g = attn::flash_backward(q, k, v, s.o, s.lse, dout, causal_options(cfg_, alibi_));
    return {g.dq, g.dk, g.dv};
  }

 private:
  const Config& cfg_;
};

// Ring attention over the mesh's ring group (zigzag shards, K/V passed around the ring).
class RingAttention final : public Attention {
 public:
  RingAttention(const Config& cfg, dist::Mesh& mesh, const dist::Layout& layout)
      : cfg_(cfg), mesh_(mesh), layout_(layout) {}
  void forward(AttnSaved& out, const Tensor& q, const Tensor& k, const Tensor& v) override {
    attn::FlashOutput r = dist::ring_attention_forward(mesh_.ring(), layout_, q, k, v, causal_options(cfg_, alibi_));
    out.o = r.o;
    out.lse = r.lse;
  }
  AttnGrads backward(const Tensor& dout, const AttnSaved& s, const Tensor& q, const Tensor& k,
                     const Tensor& v) override {
    attn::FlashGrads g =
        dist::ring_attention_backward(mesh_.ring(), layout_, q, k, v, s.o, s.lse, dout, causal_options(cfg_, alibi_));
    return {g.dq, g.dk, g.dv};
  }

 private:
  const Config& cfg_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
};

// Ulysses all-to-all over heads inside the Ulysses group, ring attention across ring groups
// (plain Ulysses when the ring has one rank, i.e. parallel.ulysses = parallel.sp).
class UlyssesAttention final : public Attention {
 public:
  UlyssesAttention(const Config& cfg, dist::Mesh& mesh, const dist::Layout& layout)
      : cfg_(cfg), mesh_(mesh), layout_(layout) {}
  void forward(AttnSaved& out, const Tensor& q, const Tensor& k, const Tensor& v) override {
    attn::FlashOutput r = dist::ulysses_attention_forward(mesh_.ulysses(), mesh_.ring(), layout_, q, k, v,
                                                          causal_options(cfg_, alibi_));
    out.o = r.o;
    out.lse = r.lse;
  }
  AttnGrads backward(const Tensor& dout, const AttnSaved& s, const Tensor& q, const Tensor& k,
                     const Tensor& v) override {
    attn::FlashGrads g = dist::ulysses_attention_backward(mesh_.ulysses(), mesh_.ring(), layout_, q, k, v, s.o, s.lse,
                                                          dout, causal_options(cfg_, alibi_));
    return {g.dq, g.dk, g.dv};
  }

 private:
  const Config& cfg_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
};

// Attention over groups of heads, one group after another (attention.head_groups): the same
// result, with the temporaries of each call (ring buffers, fp32 accumulators, cuDNN scratch)
// scaled by 1 / groups. Group g holds query heads [g H/G, (g+1) H/G) and the KV heads they read.
class HeadGroups final : public Attention {
 public:
  HeadGroups(std::unique_ptr<Attention> inner, int64_t groups) : inner_(std::move(inner)), groups_(groups) {}
  void forward(AttnSaved& out, const Tensor& q, const Tensor& k, const Tensor& v) override {
    out.o = Tensor::empty(q.shape(), q.dtype(), q.device());
    out.lse = Tensor::empty({q.size(0), q.size(2), q.size(1)}, DType::f32, q.device());
    for (int64_t g = 0; g < groups_; ++g) {
      AttnSaved part;
      select(g, q);
      inner_->forward(part, heads(q, g), heads(k, g), heads(v, g));
      heads(out.o, g).copy_from(part.o);
      lse_heads(out.lse, g).copy_from(part.lse);
    }
  }
  AttnGrads backward(const Tensor& dout, const AttnSaved& saved, const Tensor& q, const Tensor& k,
                     const Tensor& v) override {
    AttnGrads grads{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), k.dtype(), k.device()),
                    Tensor::empty(v.shape(), v.dtype(), v.device())};
    for (int64_t g = 0; g < groups_; ++g) {
      select(g, q);
      const AttnSaved part{heads(saved.o, g), lse_heads(saved.lse, g)};
      const AttnGrads pg = inner_->backward(heads(dout, g), part, heads(q, g), heads(k, g), heads(v, g));
      heads(grads.dq, g).copy_from(pg.dq);
      heads(grads.dk, g).copy_from(pg.dk);
      heads(grads.dv, g).copy_from(pg.dv);
    }
    return grads;
  }

 private:
  // Heads of group g of a [B, S, H, hd] tensor (a view).
  Tensor heads(const Tensor& t, int64_t g) const {
    const int64_t h = t.size(2) / groups_;
    return t.slice(2, g * h, (g + 1) * h);
  }
  // Heads of group g of an lse [B, H, S] (a view).
  Tensor lse_heads(const Tensor& lse, int64_t g) const {
    const int64_t h = lse.size(1) / groups_;
    return lse.slice(1, g * h, (g + 1) * h);
  }
  // Hands the inner attention the ALiBi slopes of group g's query heads.
  void select(int64_t g, const Tensor& q) {
    if (!alibi_.defined()) return;
    const int64_t h = q.size(2) / groups_;
    inner_->set_alibi(alibi_.slice(0, g * h, (g + 1) * h));
  }

  std::unique_ptr<Attention> inner_;
  int64_t groups_;
};

std::unique_ptr<Attention> make_kind(const Config& cfg, const std::string& kind, dist::Mesh& mesh,
                                     const dist::Layout& layout) {
  const auto& kinds = available_attention_kinds();
  LCTX_CHECK(std::find(kinds.begin(), kinds.end(), kind) != kinds.end(), "attention kind '", kind,
             "' is not available yet (available: flash, ring, ulysses, hybrid)");
  if (kind == "flash") {
    LCTX_CHECK(mesh.shape().sp() == 1, "attention kind flash runs on one rank, but the sp group has ",
               mesh.shape().sp(), " ranks");
    return std::make_unique<FlashAttention>(cfg);
  }
  if (kind == "ring") {
    LCTX_CHECK(mesh.shape().ulysses == 1, "attention kind ring needs parallel.ulysses = 1 (got ", mesh.shape().ulysses,
               "); use hybrid");
    return std::make_unique<RingAttention>(cfg, mesh, layout);
  }
  return std::make_unique<UlyssesAttention>(cfg, mesh, layout);  // ulysses, hybrid
}

}  // namespace

std::unique_ptr<Attention> make_attention(const Config& cfg, const std::string& kind, dist::Mesh& mesh,
                                          const dist::Layout& layout) {
  std::unique_ptr<Attention> a = make_kind(cfg, kind, mesh, layout);
  if (cfg.attention.head_groups == 1) return a;
  return std::make_unique<HeadGroups>(std::move(a), cfg.attention.head_groups);
}

}  // namespace lctx::train
