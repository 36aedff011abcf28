#include "mixers/nsa_scores.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace lctx::mixers {

namespace {

struct Dims {
  int64_t B, L, H, hd, Nc, Hk, T;
};

// Shapes, dtypes, devices and the query blocks' positions.
Dims check_scores(const char* op, const Tensor& q, const Tensor& ck, const Tensor& lse,
                  std::span<const int64_t> pos, const NsaScoring& sc) {
  LCTX_CHECK(q.defined() && ck.defined() && lse.defined(), op, ": q, ck and lse must be defined");
  LCTX_CHECK(q.dim() == 4 && ck.dim() == 4, op, ": q ", q.str(), " must be [B, L, H, hd] and ck ", ck.str(),
             " [B, Nc, Hkv, hd]");
  const Dims d{q.size(0), q.size(1), q.size(2), q.size(3), ck.size(1), ck.size(2), 0};
  LCTX_CHECK(ck.size(0) == d.B && ck.size(3) == d.hd && d.Hk >= 1 && d.H % d.Hk == 0, op, ": ck ", ck.str(),
             " does not fit q ", q.str(), " (same batch and head_dim, H a multiple of Hkv)");
  check_shape(op, "lse", lse, {d.B, d.H, d.L});
  check_same_device(op, {&q, &ck, &lse});
  check_dtype(op, "ck", ck, q.dtype());
  check_dtype(op, "lse", lse, wide_dtype(q.dtype()));
  if (q.device().is_cpu())
    LCTX_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64, op, ": q ", q.str(),
               " must be f32 or f64 on the CPU");
  else
    LCTX_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::bf16 || q.dtype() == DType::f16, op, ": q ", q.str(),
               " must be f32, bf16 or f16 on CUDA");
  const int64_t bs = sc.select_block;
  LCTX_CHECK(sc.compress_block >= 1 && bs >= 1, op, ": compress_block ", sc.compress_block, " and select_block ", bs,
             " must be >= 1");
  LCTX_CHECK(static_cast<int64_t>(pos.size()) == d.L && d.L % bs == 0, op, ": ", pos.size(), " positions for q ",
             q.str(), ": expected one per row, in query blocks of select_block ", bs);
  for (int64_t t = 0; t < d.L / bs; ++t) {
    const int64_t p0 = pos[static_cast<size_t>(t * bs)];
    bool whole = p0 % bs == 0 && p0 / bs < sc.blocks;
    for (int64_t r = 1; whole && r < bs; ++r) whole = pos[static_cast<size_t>(t * bs + r)] == p0 + r;
    LCTX_CHECK(whole, op, ": query block ", t, " (rows [", t * bs, ", ", (t + 1) * bs, "), first position ", p0,
               ") is not one of the ", sc.blocks, " selection blocks of ", bs, " consecutive positions");
  }
  Dims r = d;
  r.T = d.L / bs;
  return r;
}

// The CPU reference: out f64 [B Hk T, blocks], zeroed.
template <class T>
void cpu_scores(double* out, const T* q, const T* ck, const T* lse, std::span<const int64_t> pos, const Dims& d,
                const NsaScoring& sc) {
  const int64_t bc = sc.compress_block, bs = sc.select_block, G = d.H / d.Hk, L = d.L, H = d.H, hd = d.hd;
  const double scale = sc.softmax_scale > 0 ? sc.softmax_scale : 1.0 / std::sqrt(static_cast<double>(hd));
  // Compressed row c's share of each selection block it overlaps: (j, |c ∩ j| / b_c).
  std::vector<std::vector<std::pair<int64_t, double>>> share(static_cast<size_t>(d.Nc));
  for (int64_t c = 0; c < d.Nc; ++c)
    for (int64_t j = c * bc / bs; j * bs < (c + 1) * bc; ++j) {
      const int64_t overlap = std::min((c + 1) * bc, (j + 1) * bs) - std::max(c * bc, j * bs);
      share[static_cast<size_t>(c)].push_back({j, static_cast<double>(overlap) / static_cast<double>(bc)});
    }
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t t = 0; t < d.T; ++t)
      for (int64_t kh = 0; kh < d.Hk; ++kh) {
        double* s = out + ((b * d.Hk + kh) * d.T + t) * sc.blocks;
        for (int64_t r = 0; r < bs; ++r) {
          const int64_t l = t * bs + r, seen = std::min(d.Nc, (pos[static_cast<size_t>(l)] + 1) / bc);
          for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
            const double m = static_cast<double>(lse[(b * H + h) * L + l]);
            const T* qr = q + ((b * L + l) * H + h) * hd;
            for (int64_t c = 0; c < seen; ++c) {
              const T* kr = ck + ((b * d.Nc + c) * d.Hk + kh) * hd;
              double dot = 0;
              for (int64_t e = 0; e < hd; ++e) dot += static_cast<double>(qr[e]) * static_cast<double>(kr[e]);
              const double p = std::exp(dot * scale - m);
              for (const auto& [j, f] : share[static_cast<size_t>(c)]) s[j] += p * f;
            }
          }
        }
      }
}

// The picks of one row (nsa_pick_blocks): block 0, qb and the best of the blocks between (ties to the
// lower block), ascending. Only the best are ordered (partial_sort), not the whole row.
std::vector<int64_t> pick_row(const double* scores, int64_t qb, int64_t n) {
  std::vector<int64_t> picked = {0};
  if (qb > 0) picked.push_back(qb);
  const int64_t more = std::max<int64_t>(std::min(n, qb + 1) - static_cast<int64_t>(picked.size()), 0);
  std::vector<int64_t> rest;
  for (int64_t j = 1; j < qb; ++j) rest.push_back(j);
  const auto mid = rest.begin() + std::min<int64_t>(more, static_cast<int64_t>(rest.size()));
  std::partial_sort(rest.begin(), mid, rest.end(), [&](int64_t a, int64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  picked.insert(picked.end(), rest.begin(), mid);
  std::sort(picked.begin(), picked.end());
  return picked;
}

}  // namespace

Tensor nsa_selection_scores(const Tensor& q, const Tensor& ck, const Tensor& lse, std::span<const int64_t> positions,
                            const NsaScoring& sc, Stream s) {
  constexpr const char* op = "nsa_selection_scores";
  const Dims d = check_scores(op, q, ck, lse, positions, sc);
  const Tensor qc = q.contiguous(s), kc = ck.contiguous(s), lc = lse.contiguous(s);
  const Device dev = q.device();
  if (dev.is_cuda()) {
#ifdef LCTX_HAVE_CUDA
    LCTX_CHECK(d.B * d.Hk * d.T <= std::numeric_limits<int32_t>::max(), op, ": ", d.B * d.Hk * d.T,
               " query blocks (B x Hkv x L / select_block) exceed one launch");
    std::vector<double> starts(static_cast<size_t>(d.T));
    for (int64_t t = 0; t < d.T; ++t)
      starts[static_cast<size_t>(t)] = static_cast<double>(positions[static_cast<size_t>(t * sc.select_block)]);
    const Tensor out = Tensor::empty({d.B * d.Hk * d.T, sc.blocks}, DType::f32, dev);
    detail::nsa_selection_scores_cuda(out, qc, kc, lc, Tensor::from_vector({d.T}, starts, DType::i64).to(dev, s), sc,
                                      s);
    return out;
#else
    LCTX_FAIL(op, ": q ", q.str(), " is a CUDA tensor but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
  }
  const Tensor out = Tensor::zeros({d.B * d.Hk * d.T, sc.blocks}, DType::f64);
  LCTX_DISPATCH_CPU_FLOAT(q.dtype(), op, [&] {
    cpu_scores(out.data<double>(), qc.data<scalar_t>(), kc.data<scalar_t>(), lc.data<scalar_t>(), positions, d, sc);
  });
  return out;
}

std::vector<int64_t> nsa_pick_blocks(const Tensor& scores, std::span<const int64_t> own, int64_t top_n, Stream s) {
  constexpr const char* op = "nsa_pick_blocks";
  LCTX_CHECK(scores.defined() && scores.dim() == 2, op, ": scores ", scores.str(), " must be [rows, blocks]");
  const int64_t R = scores.size(0), blocks = scores.size(1);
  LCTX_CHECK(static_cast<int64_t>(own.size()) == R, op, ": ", own.size(), " own blocks for scores ", scores.str());
  LCTX_CHECK(top_n >= 2, op, ": top_n ", top_n, " must be >= 2 (block 0 and the own block are always picked)");
  for (int64_t r = 0; r < R; ++r)
    LCTX_CHECK(own[static_cast<size_t>(r)] >= 0 && own[static_cast<size_t>(r)] < blocks, op, ": row ", r,
               "'s own block ", own[static_cast<size_t>(r)], " is not one of the ", blocks, " blocks");
  std::vector<int64_t> out(static_cast<size_t>(R * top_n), -1);
  if (R == 0) return out;
  if (scores.device().is_cuda() && top_n <= kNsaMaxPicksCuda) {
#ifdef LCTX_HAVE_CUDA
    check_dtype(op, "scores", scores, DType::f32);
    const Tensor picks = Tensor::empty({R, top_n}, DType::i32, scores.device());
    const std::vector<double> own_d(own.begin(), own.end());
    detail::nsa_pick_blocks_cuda(picks, scores.contiguous(s),
                                 Tensor::from_vector({R}, own_d, DType::i64).to(scores.device(), s), top_n, s);
    const std::vector<double> v = picks.to_vector();
    std::transform(v.begin(), v.end(), out.begin(), [](double x) { return static_cast<int64_t>(x); });
    return out;
#else
    LCTX_FAIL(op, ": scores ", scores.str(), " are on CUDA but lctx was built without CUDA (LCTX_CUDA=OFF)");
#endif
  }
  (void)s;
  const std::vector<double> v = scores.to_vector();
  for (int64_t r = 0; r < R; ++r) {
    const std::vector<int64_t> p = pick_row(v.data() + r * blocks, own[static_cast<size_t>(r)], top_n);
    std::copy(p.begin(), p.end(), out.begin() + r * top_n);
  }
  return out;
}

}  // namespace lctx::mixers
