// FlashParams from the tensors and options of a flash_forward / flash_backward call: every
// shape, dtype, device, layout and option check the public API promises (flash.h), the outputs
// and gradients it allocates, and the pointers and strides the implementations read.
#include <cmath>
#include <tuple>

#include "attn/block_mask.h"
#include "attn/flash.h"
#include "attn/flash_params.h"

namespace lctx::attn {

namespace {

// Builds the params shared by forward and backward: q/k/v, shapes, scale and masks.
FlashParams make_params(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const FlashOptions& opts) {
  LCTX_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LCTX_CHECK(q.dim() == 4, op, ": q ", q.str(), " must be [B, Sq, Hq, D]");
  LCTX_CHECK(k.dim() == 4, op, ": k ", k.str(), " must be [B, Sk, Hkv, D]");
  FlashParams p;
  p.batch = q.size(0);
  p.seqlen_q = q.size(1);
  p.heads_q = static_cast<int>(q.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.seqlen_k = k.size(1);
  p.heads_kv = static_cast<int>(k.size(2));
  check_bshd(op, "q", q, q.shape());
  check_bshd(op, "k", k, {p.batch, p.seqlen_k, p.heads_kv, p.head_dim});
  check_bshd(op, "v", v, k.shape());
  LCTX_CHECK(p.heads_kv > 0 && p.heads_q % p.heads_kv == 0, op, ": Hq = ", p.heads_q,
             " must be a multiple of Hkv = ", p.heads_kv, " (q ", q.str(), ", k ", k.str(), ")");
  LCTX_CHECK(p.head_dim > 0, op, ": head_dim must be positive, q ", q.str());
  check_dtype(op, "k", k, q.dtype());
  check_dtype(op, "v", v, q.dtype());
  check_same_device(op, {&q, &k, &v});
  p.dtype = q.dtype();
  p.q = q.raw();
  p.k = k.raw();
  p.v = v.raw();
  bshd_strides(p.q_stride, q);
  bshd_strides(p.k_stride, k);
  bshd_strides(p.v_stride, v);

  LCTX_CHECK(opts.softmax_scale >= 0.0f && std::isfinite(opts.softmax_scale), op, ": softmax_scale ",
             opts.softmax_scale, " must be finite and >= 0 (0 = 1/sqrt(head_dim))");
  p.softmax_scale = opts.softmax_scale > 0.0f ? static_cast<double>(opts.softmax_scale)
                                              : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  p.causal = opts.mask == Mask::causal;
  LCTX_CHECK(opts.window_left >= -1 && opts.window_right >= -1, op, ": window sizes must be >= -1 (unbounded), got ",
             opts.window_left, ", ", opts.window_right);
  p.window_left = opts.window_left;
  p.window_right = opts.window_right;
  p.q_offset = opts.q_offset;
  p.k_offset = opts.k_offset;
  if (opts.alibi_slopes.defined()) {
    check_dtype(op, "alibi_slopes", opts.alibi_slopes, DType::f32);
    check_shape(op, "alibi_slopes", opts.alibi_slopes, {p.heads_q});
    check_contiguous(op, "alibi_slopes", opts.alibi_slopes);
    check_same_device(op, {&q, &opts.alibi_slopes});
    p.alibi_slopes = opts.alibi_slopes.data<float>();
  }
  LCTX_CHECK(opts.q_doc_ids.defined() == opts.k_doc_ids.defined(), op,
             ": q_doc_ids and k_doc_ids must be both defined or both undefined");
  if (opts.q_doc_ids.defined()) {
    for (auto [name, t, s] : {std::tuple{"q_doc_ids", &opts.q_doc_ids, p.seqlen_q},
                              std::tuple{"k_doc_ids", &opts.k_doc_ids, p.seqlen_k}}) {
      check_dtype(op, name, *t, DType::i32);
      check_shape(op, name, *t, {p.batch, s});
      LCTX_CHECK(t->strides()[1] == 1 || s <= 1, op, ": ", name, " ", t->str(), " needs sequence stride 1");
      check_same_device(op, {&q, t});
    }
    p.q_doc_ids = opts.q_doc_ids.data<int32_t>();
    p.k_doc_ids = opts.k_doc_ids.data<int32_t>();
    p.q_doc_stride = opts.q_doc_ids.strides()[0];
    p.k_doc_stride = opts.k_doc_ids.strides()[0];
  }
  if (opts.block_mask) {
    const BlockMask& m = *opts.block_mask;
    LCTX_CHECK(p.seqlen_q == m.seq_len() && p.seqlen_k == m.seq_len(), op, ": a block mask over ", m.seq_len(),
               " positions needs Sq = Sk = ", m.seq_len(), ", got q ", q.str(), ", k ", k.str());
    LCTX_CHECK(opts.q_offset == 0 && opts.k_offset == 0 && opts.mask == Mask::none && opts.window_left < 0 &&
                   opts.window_right < 0 && !opts.q_doc_ids.defined() && !opts.alibi_slopes.defined(),
               op, ": a block mask is the whole rule of a call: no offsets, Mask::none (causality is the mask's), "
               "no window, documents or ALiBi");
    const SparsePattern& sp = m.pattern();
    if (sp.stride == 0 && sp.n_global == 0 && sp.random_block == 0) {
      // A plain window is the band rule: the same mask without lists (and on cuDNN where it can).
      p.causal = sp.causal;
      p.window_left = sp.window - 1;
      p.window_right = sp.causal ? -1 : sp.window - 1;
    } else {
      p.block_mask = &m;
      p.sparse = sp;
    }
  }
  if (opts.tile_counter.defined()) {
    check_dtype(op, "tile_counter", opts.tile_counter, DType::i64);
    check_shape(op, "tile_counter", opts.tile_counter, {1});
    check_same_device(op, {&q, &opts.tile_counter});
    p.tile_counter = reinterpret_cast<unsigned long long*>(opts.tile_counter.data<int64_t>());
  }

  if (q.device().is_cpu()) {
    LCTX_CHECK(p.dtype == DType::f32 || p.dtype == DType::f64, op, ": the CPU reference supports f32 and f64, got ",
               q.str());
  } else {
#ifdef LCTX_HAVE_CUDA
    LCTX_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16, op, ": CUDA supports bf16 and f16 inputs, got ",
               q.str(), " (convert q/k/v, or use the CPU reference for f32/f64)");
    LCTX_CHECK(p.head_dim == 64 || p.head_dim == 128, op, ": CUDA supports head_dim 64 and 128, got ", q.str());
#else
    LCTX_FAIL(op, ": ", q.str(), " is on a GPU but lctx was built without CUDA");
#endif
  }
  return p;
}

void set_lse(FlashParams& p, const Tensor& lse) {
  p.lse = lse.raw();
  p.lse_dtype = lse.dtype();
  p.lse_stride[0] = lse.strides()[0];
  p.lse_stride[1] = lse.strides()[1];
}

}  // namespace

void flash_set_o(FlashParams& p, const Tensor& o) {
  p.o = o.raw();
  p.o_dtype = o.dtype();
  bshd_strides(p.o_stride, o);
}

void flash_set_grads(FlashParams& p, const FlashGrads& g) {
  p.dq = g.dq.raw();
  p.dk = g.dk.raw();
  p.dv = g.dv.raw();
  p.grad_dtype = g.dq.dtype();
  bshd_strides(p.dq_stride, g.dq);
  bshd_strides(p.dk_stride, g.dk);
  bshd_strides(p.dv_stride, g.dv);
}

FlashParams flash_forward_params(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const FlashOptions& opts, FlashOutput* out) {
  FlashParams p = make_params(op, q, k, v, opts);
  const DType odt = opts.out_dtype == OutputDType::input ? q.dtype() : wide_dtype(q.dtype());
  *out = FlashOutput{Tensor::empty(q.shape(), odt, q.device()),
                     Tensor::empty({p.batch, p.heads_q, p.seqlen_q}, wide_dtype(q.dtype()), q.device())};
  flash_set_o(p, out->o);
  set_lse(p, out->lse);
  return p;
}

FlashParams flash_backward_params(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const FlashOptions& opts, GradMode mode,
                                  FlashGrads* g) {
  FlashParams p = make_params(op, q, k, v, opts);
  const Device dev = q.device();
  check_bshd(op, "o", o, q.shape());
  check_bshd(op, "dout", dout, q.shape());
  LCTX_CHECK(o.dtype() == q.dtype() || o.dtype() == wide_dtype(q.dtype()), op, ": o ", o.str(),
             " must have the dtype of q or ", dtype_name(wide_dtype(q.dtype())));
  check_dtype(op, "dout", dout, q.dtype());
  LCTX_CHECK(lse.defined(), op, ": lse is undefined");
  check_shape(op, "lse", lse, {p.batch, p.heads_q, p.seqlen_q});
  LCTX_CHECK(lse.dtype() == DType::f32 || (dev.is_cpu() && lse.dtype() == DType::f64), op, ": lse ", lse.str(),
             " must be f32", dev.is_cpu() ? " or f64" : "");
  LCTX_CHECK(lse.strides()[2] == 1 || p.seqlen_q <= 1, op, ": lse ", lse.str(), " needs sequence stride 1");
  check_same_device(op, {&q, &o, &lse, &dout});
  flash_set_o(p, o);
  set_lse(p, lse);
  p.dout = dout.raw();
  bshd_strides(p.dout_stride, dout);

  if (mode == GradMode::accumulate) {
    LCTX_CHECK(g->dq.defined() && g->dk.defined() && g->dv.defined(), op,
               ": GradMode::accumulate needs dq, dk and dv in `into`");
  }
  auto prepare = [&](Tensor& t, const char* name, const Shape& shape) {
    if (!t.defined()) {
      t = Tensor::empty(shape, q.dtype(), dev);
      return;
    }
    check_bshd(op, name, t, shape);
    check_same_device(op, {&q, &t});
    if (mode == GradMode::accumulate)
      LCTX_CHECK(t.dtype() == wide_dtype(q.dtype()), op, ": accumulating into ", name, " ", t.str(), " needs ",
                 dtype_name(wide_dtype(q.dtype())));
    else
      LCTX_CHECK(t.dtype() == q.dtype() || t.dtype() == wide_dtype(q.dtype()), op, ": ", name, " ", t.str(),
                 " must have the dtype of q or ", dtype_name(wide_dtype(q.dtype())));
  };
  prepare(g->dq, "dq", q.shape());
  prepare(g->dk, "dk", k.shape());
  prepare(g->dv, "dv", k.shape());
  LCTX_CHECK(g->dq.dtype() == g->dk.dtype() && g->dk.dtype() == g->dv.dtype(), op, ": dq, dk, dv dtypes differ: ",
             g->dq.str(), ", ", g->dk.str(), ", ", g->dv.str());
  flash_set_grads(p, *g);
  p.accumulate = mode == GradMode::accumulate;
  return p;
}

}  // namespace lctx::attn
