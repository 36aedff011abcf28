#include "dist/ring_attention.h"

#include <algorithm>
#include <array>
#include <limits>

#include "dist/ring_kernels.h"
#include "dist/ring_schedule.h"
#include "dist/window_attention.h"

namespace lctx::dist {

std::string_view ring_mode_name(RingMode m) { return m == RingMode::all_gather ? "all_gather" : "ring"; }

namespace {

// K or V (i = 0, 1) of a packed [2, B, L, H, D] buffer, or a packed buffer of a gathered
// [R, 2, B, L, H, D] one.
Tensor part(const Tensor& packed, int64_t i) { return block_of(packed, i); }

Tensor pack_kv(const Tensor& k, const Tensor& v, Stream s) {
  Shape shape = k.shape();
  shape.insert(shape.begin(), 2);
  Tensor kv = Tensor::empty(shape, k.dtype(), k.device());
  part(kv, 0).copy_from(k, s);
  part(kv, 1).copy_from(v, s);
  return kv;
}

int mod(int a, int n) { return ((a % n) + n) % n; }

// What forward and backward share: validated shapes, the schedule and the gathered key doc ids.
struct RingCall {
  Comm& ring;
  const attn::FlashOptions& opts;
  Stream s;
  int r = 0, R = 1;
  std::vector<RingStep> steps;
  Tensor kdocs;        // i32 [R, B, L] or undefined
  bool halo = false;   // a causal window served by halo exchange (window_attention.h), no steps

  RingCall(const char* op, Comm& c, const Layout& layout, const Tensor& q, const Tensor& k, const Tensor& v,
           const attn::FlashOptions& o, RingMode mode, Stream st)
      : ring(c), opts(o), s(st), r(c.rank()), R(c.size()) {
    LCTX_CHECK(layout.ring_size() == R, op, ": layout ", layout.str(), " is for a ring of ", layout.ring_size(),
               " ranks, the communicator has ", R);
    const int64_t L = layout.ring_local_len();
    LCTX_CHECK(q.dim() == 4 && k.dim() == 4 && q.size(1) == L && k.size(1) == L, op, ": q ", q.str(), " and k ",
               k.str(), " must be [B, ", L, ", H, D]: this rank's tokens of ", layout.str());
    check_shape(op, "v", v, k.shape());
    LCTX_CHECK(o.q_offset == 0 && o.k_offset == 0, op,
               ": q_offset/k_offset must be 0 (global positions come from the layout)");
    LCTX_CHECK(o.q_doc_ids.defined() == o.k_doc_ids.defined(), op, ": give both q_doc_ids and k_doc_ids or neither");
    if (o.documents) {
      LCTX_CHECK(o.k_doc_ids.defined(), op, ": documents given without q_doc_ids/k_doc_ids (the kernels mask by id)");
      LCTX_CHECK(o.documents->batch() == q.size(0) && o.documents->seq_len() == layout.seq_len(), op,
                 ": documents describe ", o.documents->batch(), " rows of ", o.documents->seq_len(),
                 " tokens, the call has ", q.size(0), " rows of ", layout.seq_len());
    }
    if (mode == RingMode::ring && window_by_halo(layout, o)) {
      halo = true;
    } else if (mode == RingMode::ring) {
      steps = ring_schedule(layout, r, o);
    } else {  // every source, in the ring's order
      for (int d = 0; d < R; ++d) steps.push_back({1, d, mod(r - d, R), ring_blocks(layout, r, mod(r - d, R), o)});
    }
    if (o.k_doc_ids.defined()) {
      check_shape(op, "k_doc_ids", o.k_doc_ids, {q.size(0), L});
      kdocs = Tensor::empty({R, q.size(0), L}, DType::i32, q.device());
      ring.all_gather(o.k_doc_ids.contiguous(s), kdocs, s);
    }
  }

  // Flash options of one block: its positions, the mask only where it cuts, its doc ids.
  attn::FlashOptions block_options(const AttnBlock& b, int src) const {
    attn::FlashOptions bo = opts;
    bo.q_offset = b.q_pos;
    bo.k_offset = b.k_pos;
    if (!b.masked) {
      bo.mask = attn::Mask::none;
      bo.window_left = bo.window_right = -1;
    }
    if (kdocs.defined()) {
      bo.q_doc_ids = opts.q_doc_ids.slice(1, b.q_begin, b.q_end);
      bo.k_doc_ids = part(kdocs, src).slice(1, b.k_begin, b.k_end);
    }
    bo.out_dtype = attn::OutputDType::f32;
    return bo;
  }

  // Starts the exchange that brings step i+1's K/V (or dK/dV) into `into`: a continuing step
  // relays what this step holds, a new phase starts from the rank's own block.
  Request exchange(size_t i, const Tensor& own, const Tensor& cur, const Tensor& into) {
    const RingStep& next = steps[i + 1];
    const Tensor& send = next.continues(steps[i]) ? cur : own;
    return ring.sendrecv(send, mod(r + next.dir, R), into, mod(r - next.dir, R), s);
  }

  // The two alternating buffers of an exchange that `users` steps receive into: the second
  // only from 2 on, where one step's send and the next step's receive overlap.
  static std::array<Tensor, 2> buffers(size_t users, const Shape& shape, DType dt, Device d) {
    return {users > 0 ? Tensor::empty(shape, dt, d) : Tensor{}, users > 1 ? Tensor::empty(shape, dt, d) : Tensor{}};
  }

  Tensor gather_kv(const Tensor& own) {
    Shape shape = own.shape();
    shape.insert(shape.begin(), R);
    Tensor all = Tensor::empty(shape, own.dtype(), own.device());
    ring.all_gather(own, all, s);
    return all;
  }
};

Tensor cast(const Tensor& t, DType dt, Stream s) { return t.dtype() == dt ? t : t.to(dt, s); }

}  // namespace

attn::FlashOutput ring_attention_forward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const attn::FlashOptions& opts, RingMode mode, Stream s) {
  RingCall c("ring_attention_forward", ring, layout, q, k, v, opts, mode, s);
  if (c.halo) return window_attention_forward(ring, layout, q, k, v, opts, s);
  const DType wd = wide_dtype(q.dtype());
  // The running result: the first block, when it covers every row, becomes it (no merge);
  // otherwise it starts empty (o 0, lse -inf).
  Tensor o, lse;
  auto start_empty = [&] {
    o = Tensor::zeros(q.shape(), wd, q.device(), s);
    lse = Tensor::full({q.size(0), q.size(2), q.size(1)}, -std::numeric_limits<double>::infinity(), wd, q.device(), s);
  };
  auto compute = [&](const RingStep& st, const Tensor& kv) {
    for (const AttnBlock& b : st.blocks) {
      attn::FlashOutput p = attn::flash_forward(q.slice(1, b.q_begin, b.q_end), part(kv, 0).slice(1, b.k_begin, b.k_end),
                                                part(kv, 1).slice(1, b.k_begin, b.k_end), c.block_options(b, st.src), s);
      if (!o.defined()) {
        if (b.q_begin == 0 && b.q_end == q.size(1)) {
          o = p.o;
          lse = p.lse;
          continue;
        }
        start_empty();
      }
      merge_attention(o.slice(1, b.q_begin, b.q_end), lse.slice(2, b.q_begin, b.q_end), p.o, p.lse, s);
    }
  };

  const Tensor own = pack_kv(k, v, s);
  if (mode == RingMode::all_gather) {
    const Tensor all = c.gather_kv(own);
    for (const RingStep& st : c.steps) compute(st, part(all, st.src));
  } else {
    const auto buf = c.buffers(c.steps.size() - 1, own.shape(), own.dtype(), own.device());
    Tensor cur = own;
    for (size_t i = 0; i < c.steps.size(); ++i) {
      Request next_kv;
      if (i + 1 < c.steps.size()) next_kv = c.exchange(i, own, cur, buf[i % 2]);
      compute(c.steps[i], cur);  // overlaps the exchange
      next_kv.wait(s);
      cur = buf[i % 2];
    }
  }
  if (!o.defined()) start_empty();  // no block at all: every key is masked for these rows
  return {opts.out_dtype == attn::OutputDType::f32 ? o : cast(o, q.dtype(), s), lse};
}

attn::FlashGrads ring_attention_backward(Comm& ring, const Layout& layout, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                                         const attn::FlashOptions& opts, RingMode mode, attn::OutputDType grad_dtype,
                                         Stream s) {
  const char* op = "ring_attention_backward";
  RingCall c(op, ring, layout, q, k, v, opts, mode, s);
  check_shape(op, "o", o, q.shape());
  check_shape(op, "dout", dout, q.shape());
  check_shape(op, "lse", lse, {q.size(0), q.size(2), q.size(1)});
  if (c.halo) return window_attention_backward(ring, layout, q, k, v, o, lse, dout, opts, grad_dtype, s);
  const DType wd = wide_dtype(q.dtype());
  Tensor dq = Tensor::zeros(q.shape(), wd, q.device(), s);
  auto compute = [&](std::span<const AttnBlock> blocks, int src, const Tensor& kv, const Tensor& dkv) {
    for (const AttnBlock& b : blocks) {
      const int64_t q0 = b.q_begin, q1 = b.q_end, k0 = b.k_begin, k1 = b.k_end;
      attn::flash_backward(q.slice(1, q0, q1), part(kv, 0).slice(1, k0, k1), part(kv, 1).slice(1, k0, k1),
                           o.slice(1, q0, q1), lse.slice(2, q0, q1), dout.slice(1, q0, q1), c.block_options(b, src),
                           attn::GradMode::accumulate,
                           {dq.slice(1, q0, q1), part(dkv, 0).slice(1, k0, k1), part(dkv, 1).slice(1, k0, k1)}, s);
    }
  };

  // The blocks of a one-hop step into dkv (input dtype): where their key rows are disjoint each
  // block writes its rows (rows no block sees are zeroed), dQ through a per-block temporary;
  // otherwise they are summed in the wide dtype and cast once.
  auto compute_one = [&](std::span<const AttnBlock> blocks, int src, const Tensor& kv, Tensor dkv) {
    std::vector<AttnBlock> by_key(blocks.begin(), blocks.end());
    std::sort(by_key.begin(), by_key.end(), [](const AttnBlock& a, const AttnBlock& b) { return a.k_begin < b.k_begin; });
    bool disjoint = true;
    for (size_t j = 1; j < by_key.size(); ++j) disjoint = disjoint && by_key[j - 1].k_end <= by_key[j].k_begin;
    if (!disjoint) {
      const Tensor wide_dkv = Tensor::zeros(dkv.shape(), wd, q.device(), s);
      compute(blocks, src, kv, wide_dkv);
      dkv.copy_from(wide_dkv, s);
      return;
    }
    const int64_t L = dkv.size(2);
    int64_t covered = 0;
    for (const AttnBlock& b : by_key) {
      if (b.k_begin > covered) dkv.slice(2, covered, b.k_begin).zero(s);
      covered = b.k_end;
    }
    if (covered < L) dkv.slice(2, covered, L).zero(s);
    for (const AttnBlock& b : blocks) {
      const int64_t q0 = b.q_begin, q1 = b.q_end, k0 = b.k_begin, k1 = b.k_end;
      const Tensor dq_blk = Tensor::empty(q.slice(1, q0, q1).shape(), q.dtype(), q.device());
      attn::flash_backward(q.slice(1, q0, q1), part(kv, 0).slice(1, k0, k1), part(kv, 1).slice(1, k0, k1),
                           o.slice(1, q0, q1), lse.slice(2, q0, q1), dout.slice(1, q0, q1), c.block_options(b, src),
                           attn::GradMode::overwrite,
                           {dq_blk, part(dkv, 0).slice(1, k0, k1), part(dkv, 1).slice(1, k0, k1)}, s);
      dq.slice(1, q0, q1).add_from(dq_blk, s);
    }
  };

  const Tensor own = pack_kv(k, v, s);
  Shape dshape = own.shape();
  Tensor home = Tensor::empty(dshape, wd, q.device());  // this rank's dK/dV
  if (mode == RingMode::all_gather) {
    const Tensor all = c.gather_kv(own);
    dshape.insert(dshape.begin(), c.R);
    const Tensor dall = Tensor::zeros(dshape, wd, q.device(), s);
    for (const RingStep& st : c.steps) compute(st.blocks, st.src, part(all, st.src), part(dall, st.src));
    ring.reduce_scatter(dall, home, ReduceOp::sum, s);
  } else {
    // A remote block's dK/dV start at the first rank that uses it, travel with its K/V and go
    // home one hop after the last step of their phase. The local step runs last, straight into
    // home, so that it overlaps the last return; the first K/V exchange is the one left in the
    // open. A phase of one hop sends home one rank's gradient, no sum over ranks: it travels in
    // the input dtype (half the bytes of fp32; what cuDNN writes anyway), the blocks writing
    // it directly; longer phases carry fp32 accumulators.
    home.zero(s);
    const auto& steps = c.steps;
    auto one_hop = [&](size_t i) {
      return steps[i].hop == 1 && !(i + 1 < steps.size() && steps[i + 1].continues(steps[i]));
    };
    size_t wide_steps = 0;
    for (size_t i = 1; i < steps.size(); ++i) wide_steps += one_hop(i) ? 0 : 1;
    const auto buf = c.buffers(c.steps.size() - 1, own.shape(), own.dtype(), own.device());
    const auto dbuf = c.buffers(wide_steps, dshape, wd, q.device());
    const Tensor din = wide_steps > 0 ? Tensor::empty(dshape, wd, q.device()) : Tensor{};  // wide arrivals
    const bool narrow_used = wide_steps + 1 < steps.size();
    const Tensor nkv = narrow_used ? Tensor::empty(dshape, q.dtype(), q.device()) : Tensor{};
    const Tensor nin = narrow_used ? Tensor::empty(dshape, q.dtype(), q.device()) : Tensor{};
    Tensor cur = own, back_into;
    Request next_dkv, back;
    for (size_t i = 0, wide_i = 0; i < steps.size(); ++i) {
      const RingStep& st = steps[i];
      Request next_kv;
      if (i + 1 < steps.size()) next_kv = c.exchange(i, own, cur, buf[i % 2]);
      if (st.hop > 0) {
        Tensor dkv = nkv;
        if (one_hop(i)) {
          compute_one(st.blocks, st.src, cur, nkv);
        } else {
          dkv = dbuf[wide_i++ % 2];
          dkv.zero(s);
          compute(st.blocks, st.src, cur, dkv);
          if (st.hop > 1) {  // add what the previous hops accumulated
            next_dkv.wait(s);
            dkv.add_from(din, s);
          }
        }
        if (i + 1 < steps.size() && steps[i + 1].continues(st)) {
          next_dkv = ring.sendrecv(dkv, mod(c.r + st.dir, c.R), din, mod(c.r - st.dir, c.R), s);
        } else {  // end of a phase: dK/dV go home, this rank's come back
          back_into = one_hop(i) ? nin : din;
          back = ring.sendrecv(dkv, st.src, back_into, mod(c.r + st.dir * st.hop, c.R), s);
          if (i + 1 < steps.size()) {
            back.wait(s);
            home.add_from(back_into, s);
          }
        }
      }
      next_kv.wait(s);
      cur = buf[i % 2];
    }
    compute(steps[0].blocks, c.r, own, home);  // overlaps the last return
    if (steps.size() > 1) {
      back.wait(s);
      home.add_from(back_into, s);
    }
  }
  const DType gd = grad_dtype == attn::OutputDType::f32 ? wd : q.dtype();
  return {cast(dq, gd, s), cast(part(home, 0), gd, s), cast(part(home, 1), gd, s)};
}

}  // namespace lctx::dist
