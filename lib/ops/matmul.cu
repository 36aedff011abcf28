// cuBLASLt half of ops::matmul. Row-major c = op(a) op(b) is computed as the column-major
// product c^T = op(b)^T op(a)^T, so Lt's "A" is our b and its "B" is our a, with no copies.
#include <cstdint>
#include <map>
#include <tuple>

#include "core/cuda/launch.cuh"
#include "ops/cuda_ops.h"

namespace lctx::ops::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

cudaDataType_t lt_dtype(DType d) {
  switch (d) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: LCTX_FAIL("matmul: CUDA supports f32, bf16 and f16, got ", dtype_name(d));
  }
}

// Largest power of two (<= 256) dividing the address: what cuBLASLt may assume about it.
int alignment(const void* p) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  int a = 1;
  while (a < 256 && (u % (2 * a)) == 0) a *= 2;
  return a;
}

struct PlanKey {
  int64_t m, n, k;
  Trans ta, tb;
  DType ab, c;
  int align_a, align_b, align_c;
  auto tie() const { return std::tie(m, n, k, ta, tb, ab, c, align_a, align_b, align_c); }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// Per device, per thread: the handle, one workspace per stream (two streams of one thread must
// not share scratch), and the cached plans.
struct DeviceContext {
  cublasLtHandle_t handle = nullptr;
  std::map<void*, Tensor> workspaces;
  std::map<PlanKey, Plan> plans;
  DeviceContext() = default;
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
  ~DeviceContext() {  // errors ignored: at process exit the driver may already be gone
    for (auto& [key, p] : plans) {
      cublasLtMatrixLayoutDestroy(p.la);
      cublasLtMatrixLayoutDestroy(p.lb);
      cublasLtMatrixLayoutDestroy(p.lc);
      cublasLtMatmulDescDestroy(p.desc);
    }
    if (handle) cublasLtDestroy(handle);
  }
};

DeviceContext& context(int device) {
  thread_local std::map<int, DeviceContext> contexts;
  DeviceContext& ctx = contexts[device];
  if (!ctx.handle) LCTX_CUBLAS_CHECK(cublasLtCreate(&ctx.handle));
  return ctx;
}

const Tensor& workspace(DeviceContext& ctx, Device device, Stream s) {
  Tensor& w = ctx.workspaces[s.handle];
  if (!w.defined()) w = Tensor::empty({static_cast<int64_t>(kWorkspaceBytes / 4)}, DType::i32, device);
  return w;
}

Plan make_plan(cublasLtHandle_t handle, const PlanKey& key) {
  Plan p;
  const cudaDataType_t tab = lt_dtype(key.ab), tc = lt_dtype(key.c);
  LCTX_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = key.tb == Trans::transpose ? CUBLAS_OP_T : CUBLAS_OP_N;  // Lt A = our b
  const cublasOperation_t op_b = key.ta == Trans::transpose ? CUBLAS_OP_T : CUBLAS_OP_N;  // Lt B = our a
  LCTX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LCTX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Column-major views of the row-major operands (rows, cols, leading dimension).
  const bool bt = key.tb == Trans::transpose, at = key.ta == Trans::transpose;
  const uint64_t a_rows = bt ? key.k : key.n, a_cols = bt ? key.n : key.k;
  const uint64_t b_rows = at ? key.m : key.k, b_cols = at ? key.k : key.m;
  LCTX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, tab, a_rows, a_cols, static_cast<int64_t>(a_rows)));
  LCTX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, tab, b_rows, b_cols, static_cast<int64_t>(b_rows)));
  LCTX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, tc, key.n, key.m, key.n));

  cublasLtMatmulPreference_t pref = nullptr;
  LCTX_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t al_a = key.align_b, al_b = key.align_a, al_c = key.align_c;  // Lt A/B are our b/a
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  LCTX_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "matmul: cuBLASLt found no algorithm for [", key.m, ",",
             key.k, "] x [", key.k, ",", key.n, "] ", dtype_name(key.ab), " -> ", dtype_name(key.c), " (",
             cublasGetStatusString(st), ")");
  p.algo = result.algo;
  return p;
}

}  // namespace

void matmul(Tensor& c, const Tensor& a, const Tensor& b, const detail::GemmArgs& g, Stream s) {
  if (g.m == 0 || g.n == 0) return;
  set_device(c);
  if (g.k == 0) {  // cuBLASLt rejects k = 0: c = beta * c
    if (g.beta == 0.0f) c.zero(s);
    else LCTX_CHECK(g.beta == 1.0f, "matmul: k = 0 with beta other than 0 or 1 is not supported on CUDA");
    return;
  }
  const int device = c.device().index;
  DeviceContext& ctx = context(device);
  const PlanKey key{g.m, g.n, g.k, g.ta, g.tb, a.dtype(), c.dtype(), alignment(a.raw()), alignment(b.raw()),
                    alignment(c.raw())};
  auto it = ctx.plans.find(key);
  if (it == ctx.plans.end()) it = ctx.plans.emplace(key, make_plan(ctx.handle, key)).first;
  const Plan& p = it->second;
  const Tensor& ws = workspace(ctx, c.device(), s);
  LCTX_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, p.desc, &g.alpha, b.raw(), p.la, a.raw(), p.lb, &g.beta, c.raw(),
                                   p.lc, c.raw(), p.lc, &p.algo, ws.raw(), kWorkspaceBytes, cuda_stream(s)));
}

}  // namespace lctx::ops::cuda
