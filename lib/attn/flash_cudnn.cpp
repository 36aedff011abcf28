// cuDNN fused attention through the graph (backend) API. Each call describes its attention as
// a graph of cuDNN operations (matmul, pointwise, reduction, reshape) that cuDNN's fused SDPA
// engines recognise:
//   forward:  S = scale * Q K^T + ALiBi -> masks -> softmax (stats = max + log sum exp) -> O = P V
//   backward: Dsum = rowsum(dO * O); P = exp(scale * Q K^T + ALiBi - stats) masked;
//             dV = P^T dO; dS = scale * P * (dO V^T - Dsum); dK = dS^T Q; dQ = dS K
// Tensors are described in cuDNN's [b, h, s, d] order with lctx's [B, S, H, D] strides.
// Packed documents (FlashOptions::documents) become cuDNN ragged sequences: every document is
// its own sequence, found through per-tensor ragged offsets (lse included, in its [B, H, S]
// layout) and bounded by a padding mask; empty padding sequences round the count up. cuDNN
// 9.14 (H200) computes all of it correctly (tests/attn/test_flash_cudnn_gpu.cpp).
// The graph, engine configuration and execution plan are kept per (thread, device, shape,
// strides, mask, ALiBi form, document buckets), so a steady-state call only packs pointers
// (and, with documents, uploads the offsets) and executes.
#ifdef LCTX_HAVE_CUDA
#include "attn/flash_cudnn.h"

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/cuda_check.h"
#include "core/cudnn_check.h"

namespace lctx::attn::detail {
namespace {

using Dims = std::array<int64_t, 4>;

// One backend descriptor, destroyed with its owner.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { LCTX_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_)); }
  ~Desc() { cudnnBackendDestroyDescriptor(d_); }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  template <class T>
  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T* values, int64_t n = 1) {
    LCTX_CUDNN_CHECK(cudnnBackendSetAttribute(d_, name, type, n, values));
  }
  void set(cudnnBackendAttributeName_t name, const Desc& d) {
    cudnnBackendDescriptor_t raw = d.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw);
  }
  void finalize() { LCTX_CUDNN_CHECK(cudnnBackendFinalize(d_)); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};
using DescPtr = std::shared_ptr<Desc>;

// Unique ids of the tensors a caller binds to memory (the rest are virtual).
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV,
  kScale, kNegInfRight, kNegInfLeft, kNegInfPad, kShift, kLeft, kOne, kAlibiShift,  // scalars by value
  kDsum, kDqAcc,  // fp32 scratch (backward)
  kSlopes,        // ALiBi slopes [Hq]
  kSeqLen,        // documents: sequence lengths [B']
  kFirstVirtual = 100,
  kRaggedOffsets = 1000,  // + a tensor's uid: its ragged offsets [B' + 1] (documents)
};

cudnnDataType_t cudnn_dtype(DType d) { return d == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF; }

Dims packed(const Dims& d) { return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1}; }

// Element strides (b, s, h) of a [B, S, H, D] tensor (lse and the backward's Dsum: h stride
// and s stride 1, as [B, H, S]).
using Rows = std::array<int64_t, 3>;
Rows rows(const int64_t (&st)[3]) { return {st[0], st[1], st[2]}; }
Rows lse_rows(const FlashParams& p) { return {p.lse_stride[0], 1, p.lse_stride[1]}; }

// The documents of a call as cuDNN sequences: every document of every batch row in row-major
// order, then zero-length padding up to `count`. count and len (the longest document) are
// rounded up to powers of two so that one plan serves many packings.
struct DocSeqs {
  bool on = false;
  int64_t count = 0, len = 0;
  std::vector<int64_t> row, start, size;
};

DocSeqs doc_seqs(const FlashParams& p, const Documents* docs) {
  DocSeqs d;
  if (!p.has_docs()) return d;
  d.on = true;
  int64_t longest = 1;
  for (int64_t b = 0; b < docs->batch(); ++b) {
    const auto& st = docs->starts(b);
    for (size_t i = 0; i < st.size(); ++i) {
      const int64_t end = i + 1 < st.size() ? st[i + 1] : docs->seq_len();
      d.row.push_back(b);
      d.start.push_back(st[i]);
      d.size.push_back(end - st[i]);
      longest = std::max(longest, end - st[i]);
    }
  }
  d.count = static_cast<int64_t>(std::bit_ceil(d.row.size()));
  d.len = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(longest)));
  return d;
}

// cuDNN's shape of a call: b sequences of sq queries and sk keys (documents: B' and S').
struct Seqs {
  int64_t b, sq, sk;
};
Seqs seqs_of(const FlashParams& p, const DocSeqs& docs) {
  return docs.on ? Seqs{docs.count, docs.len, docs.len} : Seqs{p.batch, p.seqlen_q, p.seqlen_k};
}

// A tensor addressed through ragged offsets: sequence n starts at element
// row[n] * rows[0] + start[n] * rows[1].
struct Port {
  int64_t uid;
  Rows rows;
};

// The band of visible keys as cuDNN's diagonal band mask, on local indices i (query), j (key):
//   right bound: j <= i + shift         (causal: shift = q_offset - k_offset; or the right window)
//   left bound:  j + left > i           (left = window_left + 1 - (q_offset - k_offset))
struct Band {
  bool right = false, left = false;
  int32_t shift = 0;
  float left_bound = 0;
};

Band band_of(const FlashParams& p) {
  Band b;
  const int64_t delta = p.q_offset - p.k_offset;
  if (p.causal || p.window_right >= 0) {
    b.right = true;
    b.shift = static_cast<int32_t>(p.causal ? delta : delta + p.window_right);  // causal: a right window adds nothing
  }
  if (p.window_left >= 0) {
    b.left = true;
    b.left_bound = static_cast<float>(p.window_left + 1 - delta);
  }
  return b;
}

// ALiBi on local indices, with d = (j - i) - delta the global distance kpos - qpos
// (delta = q_offset - k_offset, passed by value):
//   keys never after their query (causal, or a right window of 0): score += slope[h] * d  (d <= 0)
//   otherwise:                                                      score -= slope[h] * |d|
// The first form is cudnn-frontend's alibi_mask (GEN_INDEX, SUB, MUL by [1, H, 1, 1] slopes,
// ADD). Ring blocks (delta != 0) add the shift to the row index in the graph and keys after
// the query take an ABS: cuDNN's fused engines accept both as pointwise ops on the scores
// (checked on cuDNN 9.14, H200), so no ALiBi call falls back for its offsets.
struct Alibi {
  bool on = false, abs = false;
  int32_t delta = 0;
};

Alibi alibi_of(const FlashParams& p) {
  Alibi a;
  if (!p.has_alibi()) return a;
  a.on = true;
  a.abs = !(p.causal || p.window_right == 0);
  a.delta = static_cast<int32_t>(p.q_offset - p.k_offset);
  return a;
}

// Matmul dimensions bounded per sequence by the document lengths (ragged graphs).
enum Bound { kBoundM = 1, kBoundN = 2, kBoundK = 4 };

// An operation graph under construction, then its execution plan. With `ragged_seqs` > 0
// (documents) the io tensors carry ragged offsets, matmuls take the sequence lengths as
// M/N/K bounds and scores outside a sequence are masked.
class Graph {
 public:
  explicit Graph(int64_t ragged_seqs) : ragged_seqs_(ragged_seqs) {}

  DescPtr tensor(int64_t uid, cudnnDataType_t dt, const Dims& dims, const Dims& strides, bool is_virtual = false,
                 bool by_value = false, const DescPtr& ragged = nullptr) {
    auto t = std::make_shared<Desc>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    const bool virt = is_virtual;
    t->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &dt);
    t->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dims.data(), 4);
    t->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, strides.data(), 4);
    t->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &uid);
    t->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &align);
    t->set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, &virt);
    if (by_value) {
      const bool yes = true;
      t->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, &yes);
    }
    if (ragged) t->set(CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, *ragged);
    t->finalize();
    keep_.push_back(t);
    return t;
  }
  DescPtr virt(cudnnDataType_t dt, const Dims& dims) { return virt(dt, dims, packed(dims)); }
  DescPtr virt(cudnnDataType_t dt, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual_++, dt, dims, strides, true);
  }
  DescPtr scalar(int64_t uid, cudnnDataType_t dt) { return tensor(uid, dt, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  // A call tensor of cuDNN shape dims ([b, h, s, d], or [b, h, d, s] when transposed) with
  // rows strides (b, s, h); ragged per document when the graph is.
  DescPtr io(int64_t uid, cudnnDataType_t dt, const Dims& dims, const Rows& r, bool transposed = false) {
    return tensor(uid, dt, dims, io_strides(r, transposed), false, false, offsets(uid, r));
  }
  // A virtual [b, h, s, d] view of the io tensor `uid` (same ragged offsets).
  DescPtr io_view(int64_t uid, cudnnDataType_t dt, const Dims& dims, const Rows& r) {
    return tensor(next_virtual_++, dt, dims, io_strides(r, false), true, false, offsets(uid, r));
  }

  // y = mode(x [, b [, t]]); axis only for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t math, const DescPtr& x, const DescPtr& b,
                 const DescPtr& t, const DescPtr& y, int64_t axis = -1) {
    auto pw = std::make_shared<Desc>(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, &mode);
    pw->set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, &math);
    if (axis >= 0) pw->set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, &axis);
    pw->finalize();
    auto op = std::make_shared<Desc>(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, *pw);
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, *x);
    if (b) op->set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    if (t) op->set(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t);
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, *y);
    op->finalize();
    keep_.push_back(pw);
    add(op);
  }
  DescPtr unary(cudnnPointwiseMode_t mode, const DescPtr& x, const Dims& dims) {
    auto y = virt(CUDNN_DATA_FLOAT, dims);
    pointwise(mode, CUDNN_DATA_FLOAT, x, nullptr, nullptr, y);
    return y;
  }
  DescPtr binary(cudnnPointwiseMode_t mode, const DescPtr& x, const DescPtr& b, const Dims& dims) {
    auto y = virt(CUDNN_DATA_FLOAT, dims);
    pointwise(mode, CUDNN_DATA_FLOAT, x, b, nullptr, y);
    return y;
  }
  void reduction(cudnnReduceTensorOp_t mode, const DescPtr& x, const DescPtr& y) {
    auto rd = std::make_shared<Desc>(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    rd->set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &f32);
    rd->set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &mode);
    rd->finalize();
    auto op = std::make_shared<Desc>(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_REDUCTION_DESC, *rd);
    op->set(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, *x);
    op->set(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, *y);
    op->finalize();
    keep_.push_back(rd);
    add(op);
  }
  void matmul(const DescPtr& a, const DescPtr& b, const DescPtr& c, int bounds) {
    auto md = std::make_shared<Desc>(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    md->set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &f32);
    md->finalize();
    auto op = std::make_shared<Desc>(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, *a);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, *b);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, *c);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_DESC, *md);
    if (ragged_seqs_ > 0) {
      if (bounds & kBoundM) op->set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, *seq_len());
      if (bounds & kBoundN) op->set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, *seq_len());
      if (bounds & kBoundK) op->set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, *seq_len());
    }
    op->finalize();
    keep_.push_back(md);
    add(op);
  }
  void reshape(const DescPtr& x, const DescPtr& y) {
    auto op = std::make_shared<Desc>(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, *x);
    op->set(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, *y);
    op->finalize();
    add(op);
  }

  // Scores s [b, h, sq, sk] with the keys outside the band set to -inf (one GEN_INDEX pair and
  // one select per bound, the form cuDNN's fused engines match).
  DescPtr band_mask(const DescPtr& s, const Dims& dims, const Band& band) {
    DescPtr out = s;
    auto indices = [&](DescPtr* row, DescPtr* col) {
      *row = virt(CUDNN_DATA_INT32, dims);
      *col = virt(CUDNN_DATA_INT32, dims);
      pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, out, nullptr, nullptr, *row, 2);
      pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, out, nullptr, nullptr, *col, 3);
    };
    auto select = [&](const DescPtr& keep, int64_t neg_inf_uid) {
      auto y = virt(CUDNN_DATA_FLOAT, dims);
      pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, out, scalar(neg_inf_uid, CUDNN_DATA_FLOAT), keep, y);
      out = y;
    };
    if (band.right) {
      DescPtr row, col;
      indices(&row, &col);
      if (band.shift != 0) {
        auto shifted = virt(CUDNN_DATA_INT32, dims);
        pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_INT32, row, scalar(kShift, CUDNN_DATA_INT32), nullptr, shifted);
        row = shifted;
      }
      auto keep = virt(CUDNN_DATA_BOOLEAN, dims);
      pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr, keep);
      select(keep, kNegInfRight);
    }
    if (band.left) {
      DescPtr row, col;
      indices(&row, &col);
      auto moved = virt(CUDNN_DATA_FLOAT, dims);
      pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, col, scalar(kLeft, CUDNN_DATA_FLOAT), nullptr, moved);
      auto keep = virt(CUDNN_DATA_BOOLEAN, dims);
      pointwise(CUDNN_POINTWISE_CMP_GT, CUDNN_DATA_BOOLEAN, moved, row, nullptr, keep);
      select(keep, kNegInfLeft);
    }
    return out;
  }

  // Ragged graphs: scores s [b, h, sq, sk] with the rows and columns past each sequence's
  // length set to -inf (cudnn-frontend's padding mask); s itself otherwise.
  DescPtr padding_mask(const DescPtr& s, const Dims& dims) {
    if (ragged_seqs_ == 0) return s;
    const cudnnDataType_t i32 = CUDNN_DATA_INT32, boolean = CUDNN_DATA_BOOLEAN;
    auto row = virt(i32, dims), col = virt(i32, dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr, row, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr, col, 3);
    auto row_in = virt(boolean, dims), col_in = virt(boolean, dims), keep = virt(boolean, dims);
    pointwise(CUDNN_POINTWISE_CMP_LT, boolean, row, seq_len(), nullptr, row_in);
    pointwise(CUDNN_POINTWISE_CMP_LT, boolean, col, seq_len(), nullptr, col_in);
    pointwise(CUDNN_POINTWISE_LOGICAL_AND, boolean, row_in, col_in, nullptr, keep);
    auto y = virt(CUDNN_DATA_FLOAT, dims);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, scalar(kNegInfPad, CUDNN_DATA_FLOAT), keep, y);
    return y;
  }

  // Scores s [b, h, sq, sk] plus the ALiBi bias (see Alibi); s itself without ALiBi.
  DescPtr alibi(const DescPtr& s, const Dims& dims, const Alibi& a) {
    if (!a.on) return s;
    const cudnnDataType_t i32 = CUDNN_DATA_INT32;
    auto row = virt(i32, dims), col = virt(i32, dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr, row, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr, col, 3);
    if (a.delta != 0) {
      auto shifted = virt(i32, dims);
      pointwise(CUDNN_POINTWISE_ADD, i32, row, scalar(kAlibiShift, i32), nullptr, shifted);
      row = shifted;
    }
    DescPtr dist = virt(i32, dims);
    pointwise(CUDNN_POINTWISE_SUB, i32, col, row, nullptr, dist);
    if (a.abs) dist = unary(CUDNN_POINTWISE_ABS, dist, dims);
    const int64_t h = dims[1];
    auto slopes = tensor(kSlopes, CUDNN_DATA_FLOAT, {1, h, 1, 1}, {h, 1, 1, 1});
    auto bias = binary(CUDNN_POINTWISE_MUL, dist, slopes, dims);
    return binary(a.abs ? CUDNN_POINTWISE_SUB : CUDNN_POINTWISE_ADD, s, bias, dims);
  }

  struct Plan {
    std::vector<DescPtr> keep;  // everything the plan was built from
    std::shared_ptr<Desc> graph, heur, plan;
    std::vector<std::unique_ptr<Desc>> configs;
    int64_t workspace = 0;
    std::vector<Port> ports;  // ragged tensors (documents)
  };

  // The first engine configuration of cuDNN's heuristics (mode A) that builds a plan; null,
  // with the reason in *why, when none does.
  std::unique_ptr<Plan> build(cudnnHandle_t handle, std::string* why) {
    auto plan = std::make_unique<Plan>();
    plan->graph = std::make_shared<Desc>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    std::vector<cudnnBackendDescriptor_t> raw_ops;
    for (const auto& op : ops_) raw_ops.push_back(op->get());
    plan->graph->set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, &handle);
    plan->graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, raw_ops.data(),
                     static_cast<int64_t>(raw_ops.size()));
    cudnnStatus_t st = cudnnBackendFinalize(plan->graph->get());
    if (st != CUDNN_STATUS_SUCCESS) {
      *why = "cuDNN rejected the operation graph: " + lctx::detail::cudnn_message(st);
      return nullptr;
    }
    plan->heur = std::make_shared<Desc>(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    plan->heur->set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, *plan->graph);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    plan->heur->set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode);
    st = cudnnBackendFinalize(plan->heur->get());
    if (st != CUDNN_STATUS_SUCCESS) {
      *why = "no cuDNN engine heuristics for this graph: " + lctx::detail::cudnn_message(st);
      return nullptr;
    }
    int64_t count = 0;
    LCTX_CUDNN_CHECK(cudnnBackendGetAttribute(plan->heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
    std::vector<cudnnBackendDescriptor_t> raw_cfgs;
    for (int64_t i = 0; i < count; ++i) {
      plan->configs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw_cfgs.push_back(plan->configs.back()->get());
    }
    if (count > 0)
      LCTX_CUDNN_CHECK(cudnnBackendGetAttribute(plan->heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &count, raw_cfgs.data()));
    *why = "cuDNN offers no engine for this attention graph";
    for (int64_t i = 0; i < count; ++i) {
      auto p = std::make_shared<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      p->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, &handle);
      p->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw_cfgs[i]);
      st = cudnnBackendFinalize(p->get());
      if (st != CUDNN_STATUS_SUCCESS) {
        *why = "no cuDNN engine accepts this attention graph: " + lctx::detail::cudnn_message(st);
        continue;
      }
      int64_t n = 0;
      LCTX_CUDNN_CHECK(cudnnBackendGetAttribute(p->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                                1, &n, &plan->workspace));
      plan->plan = p;
      plan->ports = ports_;
      plan->keep = std::move(keep_);
      for (auto& op : ops_) plan->keep.push_back(op);
      why->clear();
      return plan;
    }
    return nullptr;
  }

 private:
  void add(const DescPtr& op) { ops_.push_back(op); }

  static Dims io_strides(const Rows& r, bool transposed) {
    return transposed ? Dims{r[0], r[2], 1, r[1]} : Dims{r[0], r[2], r[1], 1};
  }
  // The ragged offsets of io tensor `uid` (one i64 tensor per tensor, recorded as a port);
  // null for dense graphs.
  DescPtr offsets(int64_t uid, const Rows& r) {
    if (ragged_seqs_ == 0) return nullptr;
    auto& o = offsets_[uid];
    if (!o) {
      o = tensor(kRaggedOffsets + uid, CUDNN_DATA_INT64, {ragged_seqs_ + 1, 1, 1, 1}, {1, 1, 1, 1});
      ports_.push_back({uid, r});
    }
    return o;
  }
  DescPtr seq_len() {
    if (!seq_len_) seq_len_ = tensor(kSeqLen, CUDNN_DATA_INT32, {ragged_seqs_, 1, 1, 1}, {1, 1, 1, 1});
    return seq_len_;
  }

  const int64_t ragged_seqs_;
  std::vector<DescPtr> keep_, ops_;
  std::map<int64_t, DescPtr> offsets_;
  std::vector<Port> ports_;
  DescPtr seq_len_;
  int64_t next_virtual_ = kFirstVirtual;
};

using Plan = Graph::Plan;

// What identifies a plan: direction, dtype, shapes, every stride, the band, the ALiBi form and
// the document buckets.
using PlanKey = std::vector<int64_t>;

PlanKey key_of(const FlashParams& p, bool backward, const Band& band, const Alibi& alibi, const DocSeqs& docs) {
  PlanKey k = {backward, static_cast<int64_t>(p.dtype), p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv,
               p.head_dim, band.right, band.shift, band.left, static_cast<int64_t>(band.left_bound),
               alibi.on, alibi.abs, alibi.delta != 0, docs.on, docs.count, docs.len, p.lse_stride[0], p.lse_stride[1]};
  for (const int64_t* st : {p.q_stride, p.k_stride, p.v_stride, p.o_stride})
    k.insert(k.end(), st, st + 3);
  if (backward)
    for (const int64_t* st : {p.dout_stride, p.dq_stride, p.dk_stride, p.dv_stride}) k.insert(k.end(), st, st + 3);
  return k;
}

// Pinned host memory from which the documents' lengths and offsets are copied to the device
// on the call's stream: a ring of slots, so the host waits for a slot's previous copy only
// when it has queued kSlots uploads since (it runs up to that many calls ahead of the GPU).
class Staging {
 public:
  ~Staging() {
    for (Slot& slot : slots_) {
      if (slot.copied) cudaEventDestroy(slot.copied);
      if (slot.host) cudaFreeHost(slot.host);
    }
  }
  // A stream-ordered device copy of `bytes` (freed by the caller with flash_scratch_free).
  void* upload(const std::vector<char>& bytes, Stream s) {
    Slot& slot = slots_[next_];
    next_ = (next_ + 1) % kSlots;
    if (!slot.copied) LCTX_CUDA_CHECK(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming));
    LCTX_CUDA_CHECK(cudaEventSynchronize(slot.copied));
    if (bytes.size() > slot.capacity) {
      if (slot.host) LCTX_CUDA_CHECK(cudaFreeHost(slot.host));
      slot.host = nullptr;
      LCTX_CUDA_CHECK(cudaMallocHost(&slot.host, bytes.size()));
      slot.capacity = bytes.size();
    }
    std::memcpy(slot.host, bytes.data(), bytes.size());
    void* dev = flash_scratch_alloc(static_cast<int64_t>(bytes.size()), s);
    LCTX_CUDA_CHECK(cudaMemcpyAsync(dev, slot.host, bytes.size(), cudaMemcpyHostToDevice, cuda_stream(s)));
    LCTX_CUDA_CHECK(cudaEventRecord(slot.copied, cuda_stream(s)));
    return dev;
  }

 private:
  static constexpr int kSlots = 16;
  struct Slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t copied = nullptr;
  };
  std::array<Slot, kSlots> slots_;
  int next_ = 0;
};

// A cuDNN handle with its plan cache and staging buffer, used by one thread at a time (handles
// are not thread-safe; the simulated ring runs one thread per rank).
struct ThreadCudnn {
  cudnnHandle_t handle = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;  // null: no engine (reason in failures)
  std::map<PlanKey, std::string> failures;
  Staging staging;
};

// Handles outlive the threads that used them: a thread takes an idle one of its device (or
// makes one) on first use and gives it back when it ends, so the rank threads of successive
// simulated runs (tests, benchmarks) reuse the handles and their built plans instead of paying
// cudnnCreate and every plan build again. Never destroyed: the process ends with them.
struct CudnnPool {
  std::mutex mutex;
  std::map<int, std::vector<std::unique_ptr<ThreadCudnn>>> idle;
};
CudnnPool& cudnn_pool() {
  static CudnnPool* pool = new CudnnPool;
  return *pool;
}

struct ThreadLease {
  std::map<int, std::unique_ptr<ThreadCudnn>> per_device;
  ~ThreadLease() {
    CudnnPool& pool = cudnn_pool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    for (auto& [dev, t] : per_device)
      if (t) pool.idle[dev].push_back(std::move(t));
  }
};

ThreadCudnn& thread_cudnn() {
  thread_local ThreadLease lease;
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  auto& slot = lease.per_device[dev];
  if (!slot) {
    CudnnPool& pool = cudnn_pool();
    {
      std::lock_guard<std::mutex> lock(pool.mutex);
      std::vector<std::unique_ptr<ThreadCudnn>>& idle = pool.idle[dev];
      if (!idle.empty()) {
        slot = std::move(idle.back());
        idle.pop_back();
      }
    }
    if (!slot) {
      slot = std::make_unique<ThreadCudnn>();
      LCTX_CUDNN_CHECK(cudnnCreate(&slot->handle));
    }
  }
  return *slot;
}

float neg_inf() {
  // cuDNN before 9.10 wants the lowest float as the mask value (as cudnn-frontend does).
  return cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

// Builds (once) and returns the plan for `key`, or null with *why.
const Plan* get_plan(const PlanKey& key, const DocSeqs& docs, const std::function<void(Graph&)>& describe,
                     std::string* why) {
  ThreadCudnn& tc = thread_cudnn();
  auto it = tc.plans.find(key);
  if (it == tc.plans.end()) {
    Graph g(docs.on ? docs.count : 0);
    describe(g);
    std::string reason;
    it = tc.plans.emplace(key, g.build(tc.handle, &reason)).first;
    if (!it->second) tc.failures[key] = reason;
  }
  if (!it->second) {
    *why = tc.failures[key];
    return nullptr;
  }
  return it->second.get();
}

using Bindings = std::vector<std::pair<int64_t, const void*>>;

int64_t round_up(int64_t n, int64_t to = 256) { return (n + to - 1) / to * to; }

// Documents: uploads the sequence lengths and every port's ragged offsets and binds them;
// returns the device buffer (the caller frees it after executing), null without documents.
void* bind_documents(const Plan& plan, const DocSeqs& docs, Bindings& b, Stream s) {
  if (!docs.on) return nullptr;
  const int64_t n = static_cast<int64_t>(docs.row.size());
  const int64_t len_bytes = round_up(docs.count * 4, 16), offs_bytes = round_up((docs.count + 1) * 8, 16);
  std::vector<char> bytes(static_cast<size_t>(len_bytes + offs_bytes * static_cast<int64_t>(plan.ports.size())));
  auto* lens = reinterpret_cast<int32_t*>(bytes.data());
  for (int64_t i = 0; i < n; ++i) lens[i] = static_cast<int32_t>(docs.size[i]);
  for (size_t k = 0; k < plan.ports.size(); ++k) {
    const Rows& r = plan.ports[k].rows;
    auto* offs = reinterpret_cast<int64_t*>(bytes.data() + len_bytes + offs_bytes * static_cast<int64_t>(k));
    // Padding sequences (length 0) start where the last document ends.
    const int64_t end = docs.row[n - 1] * r[0] + (docs.start[n - 1] + docs.size[n - 1]) * r[1];
    for (int64_t i = 0; i <= docs.count; ++i) offs[i] = i < n ? docs.row[i] * r[0] + docs.start[i] * r[1] : end;
  }
  char* dev = static_cast<char*>(thread_cudnn().staging.upload(bytes, s));
  b.push_back({kSeqLen, dev});
  for (size_t k = 0; k < plan.ports.size(); ++k)
    b.push_back({kRaggedOffsets + plan.ports[k].uid, dev + len_bytes + offs_bytes * static_cast<int64_t>(k)});
  return dev;
}

// Binds memory (device pointers, host pointers for by-value scalars) and runs the plan on s.
void execute(const Plan& plan, const Bindings& bindings, void* workspace, Stream s) {
  ThreadCudnn& tc = thread_cudnn();
  LCTX_CUDNN_CHECK(cudnnSetStream(tc.handle, cuda_stream(s)));
  std::vector<int64_t> uids;
  std::vector<void*> ptrs;
  for (const auto& [uid, ptr] : bindings) {
    uids.push_back(uid);
    ptrs.push_back(const_cast<void*>(ptr));
  }
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids.data(), static_cast<int64_t>(uids.size()));
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, ptrs.data(), static_cast<int64_t>(ptrs.size()));
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &workspace);
  pack.finalize();
  LCTX_CUDNN_CHECK(cudnnBackendExecute(tc.handle, plan.plan->get(), pack.get()));
}

// Scalars passed by value for one call (host memory, read when the plan executes) and the
// ALiBi slopes (device).
struct Scalars {
  float scale = 1, neg_inf_right = 0, neg_inf_left = 0, neg_inf_pad = 0, left = 0, one = 1;
  int32_t shift = 0, alibi_delta = 0;
  const float* slopes = nullptr;

  Scalars(const FlashParams& p, const Band& band, const Alibi& alibi)
      : scale(static_cast<float>(p.softmax_scale)), neg_inf_right(neg_inf()), neg_inf_left(neg_inf()),
        neg_inf_pad(neg_inf()), left(band.left_bound), shift(band.shift), alibi_delta(alibi.delta),
        slopes(p.alibi_slopes) {}

  void bind(Bindings& b, const Band& band, const Alibi& alibi, const DocSeqs& docs, bool backward) const {
    b.push_back({kScale, &scale});
    if (alibi.on) {
      b.push_back({kSlopes, slopes});
      if (alibi.delta != 0) b.push_back({kAlibiShift, &alibi_delta});
    }
    if (band.right) {
      b.push_back({kNegInfRight, &neg_inf_right});
      if (band.shift != 0) b.push_back({kShift, &shift});
    }
    if (band.left) {
      b.push_back({kNegInfLeft, &neg_inf_left});
      b.push_back({kLeft, &left});
    }
    if (docs.on) b.push_back({kNegInfPad, &neg_inf_pad});
    if (backward) b.push_back({kOne, &one});
  }
};

}  // namespace

std::string cudnn_version_string() {
  const size_t v = cudnnGetVersion();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::string cudnn_unsupported(const FlashParams& p, const Documents* docs) {
  if (p.has_sparse()) return "block masks (sparse patterns)";
  if (p.has_docs()) {
    if (!docs) return "document masks without FlashOptions::documents";
    if (p.q_offset != 0 || p.k_offset != 0 || p.seqlen_q != docs->seq_len() || p.seqlen_k != docs->seq_len() ||
        p.batch != docs->batch())
      return "document masks on part of the sequence";
  }
  if (p.has_alibi() && reinterpret_cast<uintptr_t>(p.alibi_slopes) % 16 != 0)
    return "ALiBi slopes not 16-byte aligned";
  if (p.dtype != DType::bf16 && p.dtype != DType::f16) return "dtype";
  const Band band = band_of(p);
  // cuDNN's softmax of a row with no visible key is NaN, lctx's is 0 with lse = -inf: keep
  // such calls (a key block entirely after the queries, say) on lctx's kernels.
  if (band.right && band.shift < 0) return "query rows with no visible key";
  if (band.left && (p.seqlen_q - 1) + (p.q_offset - p.k_offset) - p.window_left > p.seqlen_k - 1)
    return "query rows with no visible key";
  if (!flash_rows_aligned(p.q, p.q_stride) || !flash_rows_aligned(p.k, p.k_stride) ||
      !flash_rows_aligned(p.v, p.v_stride) || !flash_rows_aligned(p.o, p.o_stride))
    return "rows not 16-byte aligned";
  if (p.dout && (!flash_rows_aligned(p.dout, p.dout_stride) || !flash_rows_aligned(p.dq, p.dq_stride) ||
                 !flash_rows_aligned(p.dk, p.dk_stride) || !flash_rows_aligned(p.dv, p.dv_stride)))
    return "rows not 16-byte aligned";
  if (reinterpret_cast<uintptr_t>(p.lse) % 16 != 0) return "lse not 16-byte aligned";
  return {};
}

std::string cudnn_slower(const FlashParams& p, const Documents* docs) {
  if (!p.has_docs() || !docs) return {};
  int64_t count = 0;
  for (int64_t b = 0; b < docs->batch(); ++b) count += static_cast<int64_t>(docs->starts(b).size());
  if (docs->batch() * docs->seq_len() < kCudnnMinMeanDocument * count)
    return "documents shorter than " + std::to_string(kCudnnMinMeanDocument) + " tokens on average";
  return {};
}

bool flash_forward_cudnn(const FlashParams& p, const Documents* documents, Stream s, std::string* why) {
  const Band band = band_of(p);
  const Alibi alibi = alibi_of(p);
  const DocSeqs docs = doc_seqs(p, documents);
  const auto [b, sq, sk] = seqs_of(p, docs);
  const int64_t hq = p.heads_q, hk = p.heads_kv, d = p.head_dim;
  const cudnnDataType_t io = cudnn_dtype(p.dtype), f32 = CUDNN_DATA_FLOAT;
  const Dims sdim = {b, hq, sq, sk}, rdim = {b, hq, sq, 1};
  const Plan* plan = get_plan(key_of(p, false, band, alibi, docs), docs, [&](Graph& g) {
    auto Q = g.io(kQ, io, {b, hq, sq, d}, rows(p.q_stride));
    auto Kt = g.io(kK, io, {b, hk, d, sk}, rows(p.k_stride), true);
    auto V = g.io(kV, io, {b, hk, sk, d}, rows(p.v_stride));
    auto O = g.io(kO, io, {b, hq, sq, d}, rows(p.o_stride));
    auto stats = g.io(kStats, f32, rdim, lse_rows(p));
    auto S = g.virt(f32, sdim);
    g.matmul(Q, Kt, S, kBoundM | kBoundN);
    auto scaled = g.binary(CUDNN_POINTWISE_MUL, S, g.scalar(kScale, f32), sdim);
    auto scores = g.band_mask(g.padding_mask(g.alibi(scaled, sdim, alibi), sdim), sdim, band);
    auto rmax = g.virt(f32, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, scores, rmax);
    auto e = g.unary(CUDNN_POINTWISE_EXP, g.binary(CUDNN_POINTWISE_SUB, scores, rmax, sdim), sdim);
    auto rsum = g.virt(f32, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, rsum);
    g.pointwise(CUDNN_POINTWISE_ADD, f32, rmax, g.unary(CUDNN_POINTWISE_LOG, rsum, rdim), nullptr, stats);
    auto P = g.virt(io, sdim);
    g.pointwise(CUDNN_POINTWISE_DIV, f32, e, rsum, nullptr, P);
    g.matmul(P, V, O, kBoundM | kBoundK);
  }, why);
  if (!plan) return false;

  const Scalars sc(p, band, alibi);
  Bindings bind = {{kQ, p.q}, {kK, p.k}, {kV, p.v}, {kO, p.o}, {kStats, p.lse}};
  sc.bind(bind, band, alibi, docs, false);
  void* meta = bind_documents(*plan, docs, bind, s);
  void* ws = plan->workspace > 0 ? flash_scratch_alloc(plan->workspace, s) : nullptr;
  execute(*plan, bind, ws, s);
  for (void* ptr : {ws, meta})
    if (ptr) flash_scratch_free(ptr, s);
  return true;
}

bool flash_backward_cudnn(const FlashParams& p, const Documents* documents, Stream s, std::string* why) {
  const Band band = band_of(p);
  const Alibi alibi = alibi_of(p);
  const DocSeqs docs = doc_seqs(p, documents);
  const auto [b, sq, sk] = seqs_of(p, docs);
  const int64_t hq = p.heads_q, hk = p.heads_kv, d = p.head_dim;
  const cudnnDataType_t io = cudnn_dtype(p.dtype), f32 = CUDNN_DATA_FLOAT;
  const Dims sdim = {b, hq, sq, sk}, rdim = {b, hq, sq, 1}, qdim = {b, hq, sq, d};
  const Dims tdim = {b, hq, sk, sq}, tstride = {hq * sq * sk, sq * sk, 1, sk};  // transposed scores
  // fp32 scratch for Dsum ([B, Hq, Sq]) and the dq accumulator ([B, Hq, Sq, D]; documents:
  // [B, Sq, Hq, D], addressed per document like dq).
  const int64_t len = p.seqlen_q;
  const Rows dsum_rows = {hq * len, 1, len};
  const Rows dq_acc_rows = docs.on ? Rows{len * hq * d, hq * d, d} : Rows{hq * len * d, d, len * d};
  const Plan* plan = get_plan(key_of(p, true, band, alibi, docs), docs, [&](Graph& g) {
    auto Q = g.io(kQ, io, qdim, rows(p.q_stride));
    auto Kt = g.io(kK, io, {b, hk, d, sk}, rows(p.k_stride), true);
    auto Vt = g.io(kV, io, {b, hk, d, sk}, rows(p.v_stride), true);
    auto O = g.io(kO, io, qdim, rows(p.o_stride));
    auto dO = g.io(kDO, io, qdim, rows(p.dout_stride));
    auto stats = g.io(kStats, f32, rdim, lse_rows(p));
    auto dQ = g.io(kDQ, io, qdim, rows(p.dq_stride));
    auto dK = g.io(kDK, io, {b, hk, sk, d}, rows(p.dk_stride));
    auto dV = g.io(kDV, io, {b, hk, sk, d}, rows(p.dv_stride));
    auto scale = g.scalar(kScale, f32);
    // Dsum = rowsum(dO * O), materialized in fp32 scratch.
    auto dsum_r = g.virt(f32, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, g.binary(CUDNN_POINTWISE_MUL, dO, O, qdim), dsum_r);
    auto dsum = g.io(kDsum, f32, rdim, dsum_rows);
    g.pointwise(CUDNN_POINTWISE_MUL, f32, dsum_r, g.scalar(kOne, f32), nullptr, dsum);
    // P = exp(scale * Q K^T + ALiBi - stats), masked.
    auto S = g.virt(f32, sdim);
    g.matmul(Q, Kt, S, kBoundM | kBoundN);
    auto scores = g.padding_mask(g.alibi(g.binary(CUDNN_POINTWISE_MUL, S, scale, sdim), sdim, alibi), sdim);
    auto shifted = g.binary(CUDNN_POINTWISE_SUB, scores, stats, sdim);
    auto P = g.unary(CUDNN_POINTWISE_EXP, g.band_mask(shifted, sdim, band), sdim);
    // dK, dV: full-head products reduced over each KV group (GQA/MQA).
    auto to_kv = [&](const DescPtr& lhs_t, const DescPtr& rhs, const DescPtr& out) {
      if (hq == hk) {
        g.matmul(lhs_t, rhs, out, kBoundM | kBoundK);
      } else {
        auto full = g.virt(io, {b, hq, sk, d});
        g.matmul(lhs_t, rhs, full, kBoundM | kBoundK);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
      }
    };
    auto Pt = g.virt(io, tdim, tstride);
    g.reshape(P, Pt);
    to_kv(Pt, dO, dV);
    // dS = scale * P * (dO V^T - Dsum)
    auto dP = g.virt(f32, sdim);
    g.matmul(dO, Vt, dP, kBoundM | kBoundN);
    auto dS = g.binary(CUDNN_POINTWISE_MUL,
                       g.binary(CUDNN_POINTWISE_MUL, g.binary(CUDNN_POINTWISE_SUB, dP, dsum, sdim), P, sdim), scale,
                       sdim);
    auto dSt = g.virt(io, tdim, tstride);
    g.reshape(dS, dSt);
    to_kv(dSt, Q, dK);
    // dQ = dS K, accumulated in fp32 scratch, then converted.
    auto K = g.io_view(kK, io, {b, hk, sk, d}, rows(p.k_stride));
    g.reshape(Kt, K);
    auto dq_acc = g.io(kDqAcc, f32, qdim, dq_acc_rows);
    g.matmul(dS, K, dq_acc, kBoundM | kBoundK);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, f32, dq_acc, nullptr, nullptr, dQ);
  }, why);
  if (!plan) return false;

  const int64_t dsum_bytes = round_up(p.batch * hq * len * 4), dq_bytes = round_up(p.batch * hq * len * d * 4);
  char* ws = static_cast<char*>(flash_scratch_alloc(round_up(plan->workspace) + dsum_bytes + dq_bytes, s));
  char* dsum = ws + round_up(plan->workspace);
  char* dq_acc = dsum + dsum_bytes;
  if (cudnnGetVersion() < 90600)  // later versions clear it themselves
    LCTX_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, dq_bytes, cuda_stream(s)));
  const Scalars sc(p, band, alibi);
  Bindings bind = {{kQ, p.q},   {kK, p.k},   {kV, p.v},   {kO, p.o},     {kDO, p.dout},    {kStats, p.lse},
                   {kDQ, p.dq}, {kDK, p.dk}, {kDV, p.dv}, {kDsum, dsum}, {kDqAcc, dq_acc}};
  sc.bind(bind, band, alibi, docs, true);
  void* meta = bind_documents(*plan, docs, bind, s);
  execute(*plan, bind, plan->workspace > 0 ? ws : nullptr, s);
  flash_scratch_free(ws, s);
  if (meta) flash_scratch_free(meta, s);
  return true;
}

}  // namespace lctx::attn::detail
#endif
