// cuDNN fused attention through the graph (backend) API. Each call describes its attention as
// a graph of cuDNN operations (matmul, pointwise, reduction, reshape) that cuDNN's fused SDPA
// engines recognise:
//   forward:  S = scale * Q K^T -> band mask -> softmax (stats = max + log sum exp) -> O = P V
//   backward: Dsum = rowsum(dO * O); P = exp(scale * Q K^T - stats) masked;
//             dV = P^T dO; dS = scale * P * (dO V^T - Dsum); dK = dS^T Q; dQ = dS K
// Tensors are described in cuDNN's [b, h, s, d] order with lctx's [B, S, H, D] strides.
// The graph, engine configuration and execution plan are kept per (thread, device, shape,
// strides, mask), so a steady-state call only packs pointers and executes.
#ifdef LCTX_HAVE_CUDA
#include "attn/flash_cudnn.h"

#include <cudnn.h>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
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
  kScale, kNegInfRight, kNegInfLeft, kShift, kLeft, kOne,  // scalars passed by value
  kDsum, kDqAcc,                                            // fp32 scratch (backward)
  kFirstVirtual = 100,
};

cudnnDataType_t cudnn_dtype(DType d) { return d == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF; }

Dims packed(const Dims& d) { return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1}; }
// [B, S, H, D] strides (b, s, h) as cuDNN's [b, h, s, d].
Dims bhsd(const int64_t (&st)[3]) { return {st[0], st[2], st[1], 1}; }

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

// An operation graph under construction, then its execution plan.
class Graph {
 public:
  DescPtr tensor(int64_t uid, cudnnDataType_t dt, const Dims& dims, const Dims& strides, bool is_virtual = false,
                 bool by_value = false) {
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
    t->finalize();
    keep_.push_back(t);
    return t;
  }
  DescPtr virt(cudnnDataType_t dt, const Dims& dims) { return virt(dt, dims, packed(dims)); }
  DescPtr virt(cudnnDataType_t dt, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual_++, dt, dims, strides, true);
  }
  DescPtr scalar(int64_t uid, cudnnDataType_t dt) { return tensor(uid, dt, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

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
  void matmul(const DescPtr& a, const DescPtr& b, const DescPtr& c) {
    auto md = std::make_shared<Desc>(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    md->set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &f32);
    md->finalize();
    auto op = std::make_shared<Desc>(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, *a);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, *b);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, *c);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_DESC, *md);
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

  struct Plan {
    std::vector<DescPtr> keep;  // everything the plan was built from
    std::shared_ptr<Desc> graph, heur, plan;
    std::vector<std::unique_ptr<Desc>> configs;
    int64_t workspace = 0;
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
      plan->keep = std::move(keep_);
      for (auto& op : ops_) plan->keep.push_back(op);
      why->clear();
      return plan;
    }
    return nullptr;
  }

 private:
  void add(const DescPtr& op) { ops_.push_back(op); }

  std::vector<DescPtr> keep_, ops_;
  int64_t next_virtual_ = kFirstVirtual;
};

using Plan = Graph::Plan;

// What identifies a plan: direction, dtype, shapes, every stride and the band.
using PlanKey = std::vector<int64_t>;

PlanKey key_of(const FlashParams& p, bool backward, const Band& band) {
  PlanKey k = {backward, static_cast<int64_t>(p.dtype), p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv,
               p.head_dim, band.right, band.shift, band.left, static_cast<int64_t>(band.left_bound),
               p.lse_stride[0], p.lse_stride[1]};
  for (const int64_t* st : {p.q_stride, p.k_stride, p.v_stride, p.o_stride})
    k.insert(k.end(), st, st + 3);
  if (backward)
    for (const int64_t* st : {p.dout_stride, p.dq_stride, p.dk_stride, p.dv_stride}) k.insert(k.end(), st, st + 3);
  return k;
}

// One cuDNN handle and plan cache per thread and device (handles are not thread-safe; the
// simulated ring runs one thread per rank).
struct ThreadCudnn {
  cudnnHandle_t handle = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;  // null: no engine (reason in failures)
  std::map<PlanKey, std::string> failures;
  ~ThreadCudnn() {
    plans.clear();
    if (handle) cudnnDestroy(handle);
  }
};

ThreadCudnn& thread_cudnn() {
  thread_local std::map<int, std::unique_ptr<ThreadCudnn>> per_device;
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  auto& slot = per_device[dev];
  if (!slot) {
    slot = std::make_unique<ThreadCudnn>();
    LCTX_CUDNN_CHECK(cudnnCreate(&slot->handle));
  }
  return *slot;
}

float neg_inf() {
  // cuDNN before 9.10 wants the lowest float as the mask value (as cudnn-frontend does).
  return cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

// Builds (once) and returns the plan for `key`, or null with *why.
const Plan* get_plan(const PlanKey& key, const std::function<void(Graph&)>& describe, std::string* why) {
  ThreadCudnn& tc = thread_cudnn();
  auto it = tc.plans.find(key);
  if (it == tc.plans.end()) {
    Graph g;
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

// Binds memory (device pointers, host pointers for by-value scalars) and runs the plan on s.
void execute(const Plan& plan, const std::vector<std::pair<int64_t, const void*>>& bindings, void* workspace,
             Stream s) {
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

// Scalars passed by value for one call (host memory, read when the plan executes).
struct Scalars {
  float scale = 1, neg_inf_right = 0, neg_inf_left = 0, left = 0, one = 1;
  int32_t shift = 0;

  Scalars(const FlashParams& p, const Band& band)
      : scale(static_cast<float>(p.softmax_scale)), neg_inf_right(neg_inf()), neg_inf_left(neg_inf()),
        left(band.left_bound), shift(band.shift) {}

  void bind(std::vector<std::pair<int64_t, const void*>>& b, const Band& band, bool backward) const {
    b.push_back({kScale, &scale});
    if (band.right) {
      b.push_back({kNegInfRight, &neg_inf_right});
      if (band.shift != 0) b.push_back({kShift, &shift});
    }
    if (band.left) {
      b.push_back({kNegInfLeft, &neg_inf_left});
      b.push_back({kLeft, &left});
    }
    if (backward) b.push_back({kOne, &one});
  }
};

int64_t round_up(int64_t n) { return (n + 255) / 256 * 256; }

}  // namespace

std::string cudnn_version_string() {
  const size_t v = cudnnGetVersion();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::string cudnn_unsupported(const FlashParams& p) {
  if (p.has_alibi()) return "ALiBi";
  if (p.has_docs()) return "document masks";
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

bool flash_forward_cudnn(const FlashParams& p, Stream s, std::string* why) {
  const Band band = band_of(p);
  const int64_t b = p.batch, hq = p.heads_q, hk = p.heads_kv, sq = p.seqlen_q, sk = p.seqlen_k, d = p.head_dim;
  const cudnnDataType_t io = cudnn_dtype(p.dtype);
  const Dims sdim = {b, hq, sq, sk}, rdim = {b, hq, sq, 1};
  const Plan* plan = get_plan(key_of(p, false, band), [&](Graph& g) {
    auto Q = g.tensor(kQ, io, {b, hq, sq, d}, bhsd(p.q_stride));
    auto Kt = g.tensor(kK, io, {b, hk, d, sk}, {p.k_stride[0], p.k_stride[2], 1, p.k_stride[1]});
    auto V = g.tensor(kV, io, {b, hk, sk, d}, bhsd(p.v_stride));
    auto O = g.tensor(kO, io, {b, hq, sq, d}, bhsd(p.o_stride));
    auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rdim, {p.lse_stride[0], p.lse_stride[1], 1, 1});
    auto S = g.virt(CUDNN_DATA_FLOAT, sdim);
    g.matmul(Q, Kt, S);
    auto scores = g.band_mask(g.binary(CUDNN_POINTWISE_MUL, S, g.scalar(kScale, CUDNN_DATA_FLOAT), sdim), sdim, band);
    auto rmax = g.virt(CUDNN_DATA_FLOAT, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, scores, rmax);
    auto e = g.unary(CUDNN_POINTWISE_EXP, g.binary(CUDNN_POINTWISE_SUB, scores, rmax, sdim), sdim);
    auto rsum = g.virt(CUDNN_DATA_FLOAT, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, rsum);
    g.pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, rmax, g.unary(CUDNN_POINTWISE_LOG, rsum, rdim), nullptr, stats);
    auto P = g.virt(io, sdim);
    g.pointwise(CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, rsum, nullptr, P);
    g.matmul(P, V, O);
  }, why);
  if (!plan) return false;

  const Scalars sc(p, band);
  std::vector<std::pair<int64_t, const void*>> bind = {{kQ, p.q}, {kK, p.k}, {kV, p.v}, {kO, p.o}, {kStats, p.lse}};
  sc.bind(bind, band, false);
  void* ws = plan->workspace > 0 ? flash_scratch_alloc(plan->workspace, s) : nullptr;
  execute(*plan, bind, ws, s);
  if (ws) flash_scratch_free(ws, s);
  return true;
}

bool flash_backward_cudnn(const FlashParams& p, Stream s, std::string* why) {
  const Band band = band_of(p);
  const int64_t b = p.batch, hq = p.heads_q, hk = p.heads_kv, sq = p.seqlen_q, sk = p.seqlen_k, d = p.head_dim;
  const cudnnDataType_t io = cudnn_dtype(p.dtype), f32 = CUDNN_DATA_FLOAT;
  const Dims sdim = {b, hq, sq, sk}, rdim = {b, hq, sq, 1}, qdim = {b, hq, sq, d};
  const Dims tdim = {b, hq, sk, sq}, tstride = {hq * sq * sk, sq * sk, 1, sk};  // transposed scores
  const Plan* plan = get_plan(key_of(p, true, band), [&](Graph& g) {
    auto Q = g.tensor(kQ, io, qdim, bhsd(p.q_stride));
    auto Kt = g.tensor(kK, io, {b, hk, d, sk}, {p.k_stride[0], p.k_stride[2], 1, p.k_stride[1]});
    auto Vt = g.tensor(kV, io, {b, hk, d, sk}, {p.v_stride[0], p.v_stride[2], 1, p.v_stride[1]});
    auto O = g.tensor(kO, io, qdim, bhsd(p.o_stride));
    auto dO = g.tensor(kDO, io, qdim, bhsd(p.dout_stride));
    auto stats = g.tensor(kStats, f32, rdim, {p.lse_stride[0], p.lse_stride[1], 1, 1});
    auto dQ = g.tensor(kDQ, io, qdim, bhsd(p.dq_stride));
    auto dK = g.tensor(kDK, io, {b, hk, sk, d}, bhsd(p.dk_stride));
    auto dV = g.tensor(kDV, io, {b, hk, sk, d}, bhsd(p.dv_stride));
    auto scale = g.scalar(kScale, f32);
    // Dsum = rowsum(dO * O), materialized in fp32 scratch.
    auto dsum_r = g.virt(f32, rdim);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, g.binary(CUDNN_POINTWISE_MUL, dO, O, qdim), dsum_r);
    auto dsum = g.tensor(kDsum, f32, rdim, packed(rdim));
    g.pointwise(CUDNN_POINTWISE_MUL, f32, dsum_r, g.scalar(kOne, f32), nullptr, dsum);
    // P = exp(scale * Q K^T - stats), masked.
    auto S = g.virt(f32, sdim);
    g.matmul(Q, Kt, S);
    auto shifted = g.binary(CUDNN_POINTWISE_SUB, g.binary(CUDNN_POINTWISE_MUL, S, scale, sdim), stats, sdim);
    auto P = g.unary(CUDNN_POINTWISE_EXP, g.band_mask(shifted, sdim, band), sdim);
    // dK, dV: full-head products reduced over each KV group (GQA/MQA).
    auto to_kv = [&](const DescPtr& lhs_t, const DescPtr& rhs, const DescPtr& out) {
      if (hq == hk) {
        g.matmul(lhs_t, rhs, out);
      } else {
        auto full = g.virt(io, {b, hq, sk, d});
        g.matmul(lhs_t, rhs, full);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
      }
    };
    auto Pt = g.virt(io, tdim, tstride);
    g.reshape(P, Pt);
    to_kv(Pt, dO, dV);
    // dS = scale * P * (dO V^T - Dsum)
    auto dP = g.virt(f32, sdim);
    g.matmul(dO, Vt, dP);
    auto dS = g.binary(CUDNN_POINTWISE_MUL,
                       g.binary(CUDNN_POINTWISE_MUL, g.binary(CUDNN_POINTWISE_SUB, dP, dsum, sdim), P, sdim), scale,
                       sdim);
    auto dSt = g.virt(io, tdim, tstride);
    g.reshape(dS, dSt);
    to_kv(dSt, Q, dK);
    // dQ = dS K, accumulated in fp32 scratch, then converted.
    auto K = g.virt(io, {b, hk, sk, d}, bhsd(p.k_stride));
    g.reshape(Kt, K);
    auto dq_acc = g.tensor(kDqAcc, f32, qdim, packed(qdim));
    g.matmul(dS, K, dq_acc);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, f32, dq_acc, nullptr, nullptr, dQ);
  }, why);
  if (!plan) return false;

  const int64_t dsum_bytes = round_up(b * hq * sq * 4), dq_bytes = round_up(b * hq * sq * d * 4);
  char* ws = static_cast<char*>(flash_scratch_alloc(round_up(plan->workspace) + dsum_bytes + dq_bytes, s));
  char* dsum = ws + round_up(plan->workspace);
  char* dq_acc = dsum + dsum_bytes;
  if (cudnnGetVersion() < 90600)  // later versions clear it themselves
    LCTX_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, dq_bytes, cuda_stream(s)));
  const Scalars sc(p, band);
  std::vector<std::pair<int64_t, const void*>> bind = {
      {kQ, p.q},   {kK, p.k},   {kV, p.v},   {kO, p.o},       {kDO, p.dout},   {kStats, p.lse},
      {kDQ, p.dq}, {kDK, p.dk}, {kDV, p.dv}, {kDsum, dsum}, {kDqAcc, dq_acc}};
  sc.bind(bind, band, true);
  execute(*plan, bind, plan->workspace > 0 ? ws : nullptr, s);
  flash_scratch_free(ws, s);
  return true;
}

}  // namespace lctx::attn::detail
#endif
