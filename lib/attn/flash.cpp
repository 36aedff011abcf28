// Flash attention: host-side validation, FlashParams construction, the CPU reference and
// the device dispatch. The CPU reference is the FlashAttention-2 algorithm in f32/f64:
// forward = online softmax over 64-key tiles, OpenMP over (batch, head, 64-query tile);
// backward = a dk/dv pass over (batch, kv head, key tile) summing every query head of the
// group, then a dq pass over (batch, head, query tile). Both recompute the probabilities
// from lse, so memory stays O(S) (no S x S buffer) and results are deterministic.
#include "attn/flash.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "attn/flash_cudnn.h"
#include "attn/flash_params.h"

namespace lctx::attn {

std::string_view attn_backend_name(AttnBackend b) {
  switch (b) {
    case AttnBackend::automatic: return "auto";
    case AttnBackend::cudnn: return "cudnn";
    case AttnBackend::lctx: return "lctx";
  }
  return "?";
}

namespace {

// The backend named `name`, or nullopt.
std::optional<AttnBackend> find_backend(std::string_view name) {
  for (AttnBackend b : {AttnBackend::automatic, AttnBackend::cudnn, AttnBackend::lctx})
    if (name == attn_backend_name(b)) return b;
  return std::nullopt;
}

// The backend a call asks for: its option, or LCTX_ATTN_BACKEND in place of `automatic`.
AttnBackend requested_backend(const FlashOptions& opts) {
  if (opts.backend != AttnBackend::automatic) return opts.backend;
  const char* env = std::getenv("LCTX_ATTN_BACKEND");
  if (!env || !*env) return AttnBackend::automatic;
  if (const auto b = find_backend(env)) return *b;
  LCTX_FAIL("environment variable LCTX_ATTN_BACKEND='", env, "' is not one of auto, cudnn, lctx");
}

// Prints each distinct line once per process (rank 0 or a non-distributed run).
void report_once(const std::string& line) {
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mu);
  if (seen.insert(line).second && error_rank() <= 0) std::fprintf(stderr, "lctx: %s\n", line.c_str());
}

#ifdef LCTX_HAVE_CUDA
// The backend policy of a CUDA call: `attempt` tries cuDNN (false, with the reason, when it
// cannot run the call). Returns false when lctx's kernels must run the call instead.
template <class F>
bool ran_on_cudnn(const char* op, const FlashOptions& opts, const Tensor& q, const Tensor& k, F&& attempt) {
  const AttnBackend want = requested_backend(opts);
  if (want == AttnBackend::lctx) return false;
  std::string why;
  if (attempt(&why)) {
    report_once(std::string(op) + ": cuDNN " + detail::cudnn_version_string() + " fused attention");
    return true;
  }
  LCTX_CHECK(want != AttnBackend::cudnn, op, ": attention backend cudnn cannot run this call (", why, "); q ",
             q.str(), ", k ", k.str(), ". Use backend auto or lctx");
  report_once(std::string(op) + ": lctx kernels for calls cuDNN cannot run (" + why + ")");
  return false;
}
#endif

constexpr int64_t kTile = 64;

void set_strides3(int64_t (&dst)[3], const Tensor& t) {
  dst[0] = t.strides()[0];
  dst[1] = t.strides()[1];
  dst[2] = t.strides()[2];
}

void check_bshd(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  LCTX_CHECK(t.defined(), op, ": ", name, " is undefined");
  check_shape(op, name, t, shape);
  LCTX_CHECK(t.strides()[3] == 1 || t.size(3) <= 1, op, ": ", name, " ", t.str(),
             " needs a contiguous last (head_dim) dimension");
}

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
  set_strides3(p.q_stride, q);
  set_strides3(p.k_stride, k);
  set_strides3(p.v_stride, v);

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

// Accumulation (and, on the CPU, lse) type: f64 stays f64, everything else is f32.
DType wide_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

template <class T>
T load_as(const void* base, DType dt, int64_t i) {
  return dt == DType::f64 ? static_cast<T>(static_cast<const double*>(base)[i])
                          : static_cast<T>(static_cast<const float*>(base)[i]);
}

template <class T>
void store_as(void* base, DType dt, int64_t i, T v, bool accumulate) {
  if (dt == DType::f64) {
    double* d = static_cast<double*>(base) + i;
    *d = accumulate ? *d + static_cast<double>(v) : static_cast<double>(v);
  } else {
    float* d = static_cast<float*>(base) + i;
    *d = accumulate ? *d + static_cast<float>(v) : static_cast<float>(v);
  }
}

template <class T>
T dot(const T* a, const T* b, int n) {
  T s = 0;
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Score of local pair (i, j) of head h, or -inf where masked. `unmasked`: the tile needs no
// per-element rule (flash_tile_unmasked).
template <class T>
T cpu_score(const FlashParams& p, bool unmasked, int64_t b, int h, int64_t i, int64_t j, const T* qi, const T* kj) {
  const int64_t qpos = p.q_offset + i, kpos = p.k_offset + j;
  if (!unmasked) {
    if (!flash_pos_visible(p, qpos, kpos)) return -std::numeric_limits<T>::infinity();
    if (p.q_doc_ids && p.q_doc_ids[b * p.q_doc_stride + i] != p.k_doc_ids[b * p.k_doc_stride + j])
      return -std::numeric_limits<T>::infinity();
  }
  T s = dot(qi, kj, p.head_dim) * static_cast<T>(p.softmax_scale);
  if (p.alibi_slopes) s -= static_cast<T>(p.alibi_slopes[h]) * static_cast<T>(std::abs(qpos - kpos));
  return s;
}

template <class T>
void cpu_forward(const FlashParams& p) {
  const int D = p.head_dim;
  const int64_t nqt = (p.seqlen_q + kTile - 1) / kTile;
  const int64_t ntask = p.batch * p.heads_q * nqt;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* o = static_cast<T*>(p.o);  // o_dtype == T on the CPU
  T* lse = static_cast<T*>(p.lse);
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
#pragma omp parallel
  {
    std::vector<T> acc(kTile * D), s(kTile * kTile), m(kTile), l(kTile);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t b = task / (p.heads_q * nqt);
      const int h = static_cast<int>(task / nqt % p.heads_q), hk = h / p.group();
      const int64_t q0 = task % nqt * kTile, nq = std::min(kTile, p.seqlen_q - q0);
      const T* qb = q + b * p.q_stride[0] + h * p.q_stride[2];
      const T* kb = k + b * p.k_stride[0] + hk * p.k_stride[2];
      const T* vb = v + b * p.v_stride[0] + hk * p.v_stride[2];
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), T(0));
      int64_t klo, khi;
      flash_key_range(p, q0, q0 + nq, &klo, &khi);
      for (int64_t k0 = klo; k0 < khi; k0 += kTile) {
        const int64_t nk = std::min(kTile, khi - k0);
        const bool unmasked = flash_tile_unmasked(p, q0, q0 + nq, k0, k0 + nk);
        for (int64_t i = 0; i < nq; ++i) {
          const T* qi = qb + (q0 + i) * p.q_stride[1];
          T* si = &s[i * kTile];
          T mx = kNegInf;
          for (int64_t j = 0; j < nk; ++j) {
            si[j] = cpu_score(p, unmasked, b, h, q0 + i, k0 + j, qi, kb + (k0 + j) * p.k_stride[1]);
            mx = std::max(mx, si[j]);
          }
          const T m_new = std::max(m[i], mx);
          if (m_new == kNegInf) continue;  // nothing visible yet: never exp(s - (-inf))
          const T alpha = std::exp(m[i] - m_new);  // m[i] = -inf gives 0
          T* ai = &acc[i * D];
          l[i] *= alpha;
          for (int d = 0; d < D; ++d) ai[d] *= alpha;
          for (int64_t j = 0; j < nk; ++j) {
            if (si[j] == kNegInf) continue;
            const T pj = std::exp(si[j] - m_new);
            l[i] += pj;
            const T* vj = vb + (k0 + j) * p.v_stride[1];
            for (int d = 0; d < D; ++d) ai[d] += pj * vj[d];
          }
          m[i] = m_new;
        }
      }
      for (int64_t i = 0; i < nq; ++i) {
        T* oi = o + b * p.o_stride[0] + (q0 + i) * p.o_stride[1] + h * p.o_stride[2];
        const T inv = l[i] > 0 ? T(1) / l[i] : T(0);
        for (int d = 0; d < D; ++d) oi[d] = acc[i * D + d] * inv;
        lse[b * p.lse_stride[0] + h * p.lse_stride[1] + q0 + i] = l[i] > 0 ? m[i] + std::log(l[i]) : kNegInf;
      }
    }
  }
}

template <class T>
void cpu_backward(const FlashParams& p) {
  const int D = p.head_dim, G = p.group();
  const int64_t Sq = p.seqlen_q, Hq = p.heads_q;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  const T scale = static_cast<T>(p.softmax_scale);
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();

  // Per row: lse and Di = rowsum(dO * O) (O as given: possibly the global output).
  std::vector<T> lse(p.batch * Hq * Sq), Di(p.batch * Hq * Sq);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.batch * Hq * Sq; ++r) {
    const int64_t b = r / (Hq * Sq), h = r / Sq % Hq, i = r % Sq;
    lse[r] = load_as<T>(p.lse, p.lse_dtype, b * p.lse_stride[0] + h * p.lse_stride[1] + i);
    const int64_t oo = b * p.o_stride[0] + i * p.o_stride[1] + h * p.o_stride[2];
    const T* doi = dout + b * p.dout_stride[0] + i * p.dout_stride[1] + h * p.dout_stride[2];
    T s = 0;
    for (int d = 0; d < D; ++d) s += doi[d] * load_as<T>(p.o, p.o_dtype, oo + d);
    Di[r] = s;
  }
  auto qrow = [&](int64_t b, int64_t h, int64_t i) { return q + b * p.q_stride[0] + i * p.q_stride[1] + h * p.q_stride[2]; };
  auto dorow = [&](int64_t b, int64_t h, int64_t i) {
    return dout + b * p.dout_stride[0] + i * p.dout_stride[1] + h * p.dout_stride[2];
  };

  // dK, dV: one task per (batch, kv head, key tile), summing all query heads of the group.
  const int64_t nkt = (p.seqlen_k + kTile - 1) / kTile;
#pragma omp parallel
  {
    std::vector<T> dk(kTile * D), dv(kTile * D);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < p.batch * p.heads_kv * nkt; ++task) {
      const int64_t b = task / (p.heads_kv * nkt);
      const int hk = static_cast<int>(task / nkt % p.heads_kv);
      const int64_t k0 = task % nkt * kTile, nk = std::min(kTile, p.seqlen_k - k0);
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      int64_t qlo, qhi;
      flash_query_range(p, k0, k0 + nk, &qlo, &qhi);
      for (int h = hk * G; h < (hk + 1) * G; ++h) {
        for (int64_t q0 = qlo; q0 < qhi; q0 += kTile) {
          const int64_t nq = std::min(kTile, qhi - q0);
          const bool unmasked = flash_tile_unmasked(p, q0, q0 + nq, k0, k0 + nk);
          for (int64_t i = q0; i < q0 + nq; ++i) {
            const int64_t r = (b * Hq + h) * Sq + i;
            if (lse[r] == kNegInf) continue;  // fully masked row: P = 0
            const T* qi = qrow(b, h, i);
            const T* doi = dorow(b, h, i);
            for (int64_t j = 0; j < nk; ++j) {
              const T* kj = k + b * p.k_stride[0] + (k0 + j) * p.k_stride[1] + hk * p.k_stride[2];
              const T s = cpu_score(p, unmasked, b, h, i, k0 + j, qi, kj);
              if (s == kNegInf) continue;
              const T pij = std::exp(s - lse[r]);
              const T* vj = v + b * p.v_stride[0] + (k0 + j) * p.v_stride[1] + hk * p.v_stride[2];
              const T ds = pij * (dot(doi, vj, D) - Di[r]) * scale;
              T* dvj = &dv[j * D];
              T* dkj = &dk[j * D];
              for (int d = 0; d < D; ++d) {
                dvj[d] += pij * doi[d];
                dkj[d] += ds * qi[d];
              }
            }
          }
        }
      }
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t ko = b * p.dk_stride[0] + (k0 + j) * p.dk_stride[1] + hk * p.dk_stride[2];
        const int64_t vo = b * p.dv_stride[0] + (k0 + j) * p.dv_stride[1] + hk * p.dv_stride[2];
        for (int d = 0; d < D; ++d) {
          store_as(p.dk, p.grad_dtype, ko + d, dk[j * D + d], p.accumulate);
          store_as(p.dv, p.grad_dtype, vo + d, dv[j * D + d], p.accumulate);
        }
      }
    }
  }

  // dQ: one task per (batch, head, query tile).
  const int64_t nqt = (Sq + kTile - 1) / kTile;
#pragma omp parallel
  {
    std::vector<T> dq(D);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < p.batch * Hq * nqt; ++task) {
      const int64_t b = task / (Hq * nqt);
      const int h = static_cast<int>(task / nqt % Hq), hk = h / G;
      const int64_t q0 = task % nqt * kTile, nq = std::min(kTile, Sq - q0);
      int64_t klo, khi;
      flash_key_range(p, q0, q0 + nq, &klo, &khi);
      for (int64_t i = q0; i < q0 + nq; ++i) {
        const int64_t r = (b * Hq + h) * Sq + i;
        std::fill(dq.begin(), dq.end(), T(0));
        if (lse[r] != kNegInf) {
          const T* qi = qrow(b, h, i);
          const T* doi = dorow(b, h, i);
          for (int64_t k0 = klo; k0 < khi; k0 += kTile) {
            const int64_t nk = std::min(kTile, khi - k0);
            const bool unmasked = flash_tile_unmasked(p, q0, q0 + nq, k0, k0 + nk);
            for (int64_t j = k0; j < k0 + nk; ++j) {
              const T* kj = k + b * p.k_stride[0] + j * p.k_stride[1] + hk * p.k_stride[2];
              const T s = cpu_score(p, unmasked, b, h, i, j, qi, kj);
              if (s == kNegInf) continue;
              const T* vj = v + b * p.v_stride[0] + j * p.v_stride[1] + hk * p.v_stride[2];
              const T ds = std::exp(s - lse[r]) * (dot(doi, vj, D) - Di[r]) * scale;
              for (int d = 0; d < D; ++d) dq[d] += ds * kj[d];
            }
          }
        }
        const int64_t qo = b * p.dq_stride[0] + i * p.dq_stride[1] + h * p.dq_stride[2];
        for (int d = 0; d < D; ++d) store_as(p.dq, p.grad_dtype, qo + d, dq[d], p.accumulate);
      }
    }
  }
}

}  // namespace

AttnBackend parse_attn_backend(std::string_view name) {
  if (const auto b = find_backend(name)) return *b;
  LCTX_FAIL("attention backend '", name, "' is not one of auto, cudnn, lctx");
}

FlashOutput flash_forward(const Tensor& q, const Tensor& k, const Tensor& v, const FlashOptions& opts, Stream s) {
  const char* op = "flash_forward";
  FlashParams p = make_params(op, q, k, v, opts);
  const Device dev = q.device();
  const DType odt = opts.out_dtype == OutputDType::input ? q.dtype() : wide_dtype(q.dtype());
  FlashOutput out{Tensor::empty(q.shape(), odt, dev),
                  Tensor::empty({p.batch, p.heads_q, p.seqlen_q}, wide_dtype(q.dtype()), dev)};
  p.o = out.o.raw();
  p.o_dtype = odt;
  set_strides3(p.o_stride, out.o);
  p.lse = out.lse.raw();
  p.lse_dtype = out.lse.dtype();
  p.lse_stride[0] = out.lse.strides()[0];
  p.lse_stride[1] = out.lse.strides()[1];
  if (out.o.numel() == 0) return out;
  (void)s;
  if (dev.is_cpu()) {
    LCTX_CHECK(requested_backend(opts) != AttnBackend::cudnn, op, ": attention backend cudnn needs CUDA tensors, q ",
               q.str());
    LCTX_DISPATCH_CPU_FLOAT(p.dtype, op, [&] { cpu_forward<scalar_t>(p); });
  } else {
#ifdef LCTX_HAVE_CUDA
    const bool cudnn = ran_on_cudnn(op, opts, q, k, [&](std::string* why) {
      // cuDNN writes o in the input dtype: an f32 output goes through a converted copy.
      const Tensor o_io = odt == q.dtype() ? out.o : Tensor::empty(q.shape(), q.dtype(), dev);
      FlashParams pc = p;
      pc.o = o_io.raw();
      pc.o_dtype = q.dtype();
      set_strides3(pc.o_stride, o_io);
      *why = detail::cudnn_unsupported(pc);
      if (!why->empty() || !detail::flash_forward_cudnn(pc, s, why)) return false;
      if (o_io.raw() != out.o.raw()) out.o.copy_from(o_io, s);
      return true;
    });
    if (!cudnn) flash_forward_cuda(p, s);
#endif
  }
  return out;
}

FlashGrads flash_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                          const Tensor& dout, const FlashOptions& opts, GradMode mode, FlashGrads into, Stream s) {
  const char* op = "flash_backward";
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
  p.o = o.raw();
  p.o_dtype = o.dtype();
  set_strides3(p.o_stride, o);
  p.lse = lse.raw();
  p.lse_dtype = lse.dtype();
  p.lse_stride[0] = lse.strides()[0];
  p.lse_stride[1] = lse.strides()[1];
  p.dout = dout.raw();
  set_strides3(p.dout_stride, dout);

  FlashGrads g = into;
  if (mode == GradMode::accumulate) {
    LCTX_CHECK(into.dq.defined() && into.dk.defined() && into.dv.defined(), op,
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
  prepare(g.dq, "dq", q.shape());
  prepare(g.dk, "dk", k.shape());
  prepare(g.dv, "dv", k.shape());
  LCTX_CHECK(g.dq.dtype() == g.dk.dtype() && g.dk.dtype() == g.dv.dtype(), op, ": dq, dk, dv dtypes differ: ",
             g.dq.str(), ", ", g.dk.str(), ", ", g.dv.str());
  p.dq = g.dq.raw();
  p.dk = g.dk.raw();
  p.dv = g.dv.raw();
  p.grad_dtype = g.dq.dtype();
  set_strides3(p.dq_stride, g.dq);
  set_strides3(p.dk_stride, g.dk);
  set_strides3(p.dv_stride, g.dv);
  p.accumulate = mode == GradMode::accumulate;
  if (g.dq.numel() == 0 && g.dk.numel() == 0) return g;
  (void)s;
  if (dev.is_cpu()) {
    LCTX_CHECK(requested_backend(opts) != AttnBackend::cudnn, op, ": attention backend cudnn needs CUDA tensors, q ",
               q.str());
    LCTX_DISPATCH_CPU_FLOAT(p.dtype, op, [&] { cpu_backward<scalar_t>(p); });
  } else {
#ifdef LCTX_HAVE_CUDA
    const bool cudnn = ran_on_cudnn(op, opts, q, k, [&](std::string* why) {
      // cuDNN reads o and writes dq/dk/dv in the input dtype: f32 o is converted, f32 or
      // accumulated gradients go through temporaries.
      FlashParams pc = p;
      const Tensor o_io = o.dtype() == q.dtype() ? o : o.to(q.dtype(), s);
      pc.o = o_io.raw();
      pc.o_dtype = q.dtype();
      set_strides3(pc.o_stride, o_io);
      const bool direct = mode == GradMode::overwrite && g.dq.dtype() == q.dtype();
      const FlashGrads t = direct ? g
                                  : FlashGrads{Tensor::empty(q.shape(), q.dtype(), dev),
                                               Tensor::empty(k.shape(), q.dtype(), dev),
                                               Tensor::empty(k.shape(), q.dtype(), dev)};
      pc.dq = t.dq.raw();
      pc.dk = t.dk.raw();
      pc.dv = t.dv.raw();
      pc.grad_dtype = q.dtype();
      set_strides3(pc.dq_stride, t.dq);
      set_strides3(pc.dk_stride, t.dk);
      set_strides3(pc.dv_stride, t.dv);
      *why = detail::cudnn_unsupported(pc);
      if (!why->empty() || !detail::flash_backward_cudnn(pc, s, why)) return false;
      if (direct) return true;
      for (auto [dst, src] : {std::pair{&g.dq, &t.dq}, std::pair{&g.dk, &t.dk}, std::pair{&g.dv, &t.dv}}) {
        if (mode == GradMode::accumulate) dst->add_from(*src, s);
        else dst->copy_from(*src, s);
      }
      return true;
    });
    if (!cudnn) flash_backward_cuda(p, s);
#endif
  }
  return g;
}

}  // namespace lctx::attn
