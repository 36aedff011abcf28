// Flash attention CPU reference: the FlashAttention-2 algorithm in f32/f64, the reference the
// CUDA kernels and cuDNN are tested against. forward = online softmax over 64-key tiles,
// OpenMP over (batch, head, 64-query tile); backward = a dk/dv pass over (batch, kv head, key
// tile) summing every query head of the group, then a dq pass over (batch, head, query tile).
// Both recompute the probabilities from lse, so memory stays O(S) (no S x S buffer) and results
// are deterministic.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/flash_params.h"

namespace lctx::attn {

namespace {

constexpr int64_t kTile = 64;

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
    if (p.has_sparse() && !sparse_visible(p.sparse, qpos, kpos)) return -std::numeric_limits<T>::infinity();
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

void flash_forward_cpu(const FlashParams& p) {
  LCTX_DISPATCH_CPU_FLOAT(p.dtype, "flash_forward", [&] { cpu_forward<scalar_t>(p); });
}

void flash_backward_cpu(const FlashParams& p) {
  LCTX_DISPATCH_CPU_FLOAT(p.dtype, "flash_backward", [&] { cpu_backward<scalar_t>(p); });
}

}  // namespace lctx::attn
