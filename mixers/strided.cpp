#include "mixers/strided.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "attn/strided_attention.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/row_gather.h"

namespace lctx::mixers {

namespace {

class StridedMixer final : public Mixer {
 public:
  StridedMixer(const StridedMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout)
      : o_(o), core_(o.core), mesh_(mesh), layout_(layout), segments_(layout.segments(mesh.coords().sp)),
        all_positions_(static_cast<size_t>(layout.seq_len())) {
    LCTX_CHECK(o.core.position != Position::alibi, "strided mixer: ALiBi is not supported (the strided part runs in ",
               "residue coordinates); use RoPE or no positions");
    LCTX_CHECK(o.window >= 1 && o.window <= layout.seq_len(), "strided mixer: window ", o.window,
               " must be in [1, seq_len = ", layout.seq_len(), "]");
    LCTX_CHECK(o.stride >= 1, "strided mixer: stride ", o.stride, " must be >= 1");
    LCTX_CHECK(mesh.shape().sp() == layout.size(), "strided mixer: the sp group has ", mesh.shape().sp(),
               " ranks, the layout ", layout.str());
    std::iota(all_positions_.begin(), all_positions_.end(), int64_t{0});
  }

  std::vector<ParamSpec> param_specs() const override { return core_.param_specs(); }
  void bind(std::span<const Param> p) override { core_.bind(p); }

  Tensor forward(const Tokens& in, std::unique_ptr<Saved>& saved, Pass pass) override {
    LCTX_CHECK(!in.doc_ids.defined(), "strided mixer: packed documents are not supported");
    if (pass != Pass::recompute) saved = std::make_unique<StridedSaved>();
    auto& s = static_cast<StridedSaved&>(*saved);
    core_.qkv_forward(s.qkv, in);
    if (pass != Pass::recompute) attend_forward(s);
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
    auto& s = static_cast<StridedSaved&>(saved);
    // The backward reads y no more: d(o) is written over it when it fits.
    Tensor d_o = s.y.numel() >= s.o.numel() ? s.y.view({-1}).slice(0, 0, s.o.numel()).view(s.o.shape())
                                            : Tensor::empty(s.o.shape(), s.o.dtype(), s.o.device());
    core_.out_backward(d_o, dy, s.o);
    attn::FlashGrads g = attend_backward(d_o, s);
    core_.qkv_backward(dx, s.qkv, g.dq, g.dk, g.dv, in);
  }

  // Keys of the last position: the window and the strided keys before it.
  double flops_per_token(int64_t seq_len) const override {
    const HeadShape& s = o_.core.shape;
    const int64_t keys = std::min(o_.window, seq_len) + std::max<int64_t>(0, seq_len - o_.window) / o_.stride;
    return core_.flops_per_token() + 6.0 * static_cast<double>(s.heads * s.head_dim) * static_cast<double>(keys);
  }

 private:
  bool sharded() const { return mesh_.shape().sp() > 1; }

  // The queries at global positions [q0, end), keys [0, end) (a window beyond them sees them all).
  attn::StridedOptions options(int64_t q0, int64_t end) const {
    return {.window = std::min(o_.window, end),
            .stride = o_.stride,
            .q_offset = q0,
            .softmax_scale = static_cast<float>(o_.softmax_scale),
            .backend = o_.backend};
  }

  // K and V of the whole sequence in global order, [B, S, Hkv, hd] views of one gathered
  // [B, S, 2 Hkv, hd] (this rank's own k and v without sequence parallelism).
  std::pair<Tensor, Tensor> whole_kv(const QkvActs& a) const {
    if (!sharded()) return {a.k, a.v};
    const int64_t Hk = a.k.size(2);
    Tensor kv = Tensor::empty({a.k.size(0), a.k.size(1), 2 * Hk, a.k.size(3)}, a.k.dtype(), a.k.device());
    kv.slice(2, 0, Hk).copy_from(a.k);
    kv.slice(2, Hk, 2 * Hk).copy_from(a.v);
    const Tensor all = dist::row_gather_forward(mesh_.sp(), layout_, kv, all_positions_);
    return {all.slice(2, 0, Hk), all.slice(2, Hk, 2 * Hk)};
  }

  void attend_forward(StridedSaved& s) {
    const QkvActs& a = s.qkv;
    const auto [K, V] = whole_kv(a);
    if (!sharded()) {  // one run: [0, S)
      attn::FlashOutput r = attn::strided_attention_forward(a.q, K, V, options(0, layout_.seq_len()));
      s.o = r.o;
      s.lse = r.lse;
      return;
    }
    s.o = Tensor::empty(a.q.shape(), a.q.dtype(), a.q.device());
    s.lse = Tensor::empty({a.q.size(0), a.q.size(2), a.q.size(1)}, wide_dtype(a.q.dtype()), a.q.device());
    for (const dist::Segment& g : segments_) {
      const int64_t lb = g.local_begin, le = lb + g.length, end = g.global_begin + g.length;
      const attn::FlashOutput r = attn::strided_attention_forward(a.q.slice(1, lb, le), K.slice(1, 0, end),
                                                                  V.slice(1, 0, end), options(g.global_begin, end));
      s.o.slice(1, lb, le).copy_from(r.o);
      s.lse.slice(2, lb, le).copy_from(r.lse);
    }
  }

  attn::FlashGrads attend_backward(const Tensor& d_o, const StridedSaved& s) {
    const QkvActs& a = s.qkv;
    const auto [K, V] = whole_kv(a);
    if (!sharded())
      return attn::strided_attention_backward(a.q, K, V, s.o, s.lse, d_o, options(0, layout_.seq_len()));
    const int64_t B = a.k.size(0), Hk = a.k.size(2), hd = a.k.size(3), S = layout_.seq_len();
    const DType wide = wide_dtype(a.q.dtype());
    const Device dev = a.q.device();
    attn::FlashGrads g{Tensor::empty(a.q.shape(), a.q.dtype(), dev), Tensor(), Tensor()};
    // dK and dV of the whole sequence from this rank's queries, summed over its runs in fp32.
    Tensor dkv_all = Tensor::zeros({B, S, 2 * Hk, hd}, wide, dev);
    for (const dist::Segment& seg : segments_) {
      const int64_t lb = seg.local_begin, le = lb + seg.length, end = seg.global_begin + seg.length;
      const attn::FlashGrads r = attn::strided_attention_backward(
          a.q.slice(1, lb, le), K.slice(1, 0, end), V.slice(1, 0, end), s.o.slice(1, lb, le),
          s.lse.slice(2, lb, le), d_o.slice(1, lb, le), options(seg.global_begin, end));
      g.dq.slice(1, lb, le).copy_from(r.dq);
      dkv_all.slice(1, 0, end).slice(2, 0, Hk).add_from(r.dk);
      dkv_all.slice(1, 0, end).slice(2, Hk, 2 * Hk).add_from(r.dv);
    }
    Tensor dkv = Tensor::zeros({B, a.k.size(1), 2 * Hk, hd}, wide, dev);
    dist::row_gather_backward(mesh_.sp(), layout_, dkv_all, all_positions_, dkv);
    g.dk = dkv.slice(2, 0, Hk).contiguous().to(a.k.dtype());
    g.dv = dkv.slice(2, Hk, 2 * Hk).contiguous().to(a.v.dtype());
    return g;
  }

  StridedMixerOptions o_;
  AttentionCore core_;
  dist::Mesh& mesh_;
  const dist::Layout& layout_;
  std::vector<dist::Segment> segments_;  // the runs of consecutive positions this rank holds
  std::vector<int64_t> all_positions_;   // 0 .. S - 1: the rows every rank gathers
};

}  // namespace

std::unique_ptr<Mixer> make_strided_mixer(const StridedMixerOptions& o, dist::Mesh& mesh, const dist::Layout& layout) {
  return std::make_unique<StridedMixer>(o, mesh, layout);
}

}  // namespace lctx::mixers
