// mixers::nsa_selection_scores on CUDA against the CPU reference (f64 sums) on the same values:
// f32 and bf16 queries and compressed keys with the compressed softmax's true f32 log-sum-exp,
// block sizes with b_s a multiple of b_c, b_c a multiple of b_s and neither, more compressed
// rows than the kernel holds in one chunk, the positions of zigzag rank 0 of 2 (two segments).
// Both sides sum the same probabilities in another order (fp32 against f64): relative error
// 1e-5. Also exact: zero past each query block's own block, and the selection blocks that one
// compressed row alone covers tie (what the pick's "ties to the lower block" relies on).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "core/cuda_check.h"
#include "core/rng.h"
#include "mixers/nsa_scores.h"

using namespace lctx;
using namespace lctx::mixers;

namespace {

struct ScoresCase {
  std::string name;
  int64_t seq, compress_block, select_block, head_dim;
  float softmax_scale;
};

void PrintTo(const ScoresCase& c, std::ostream* os) { *os << c.name; }

Tensor randn(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::f64);
  rng_normal(t, seed, 0, 0.0, 1.0);
  return t;
}

// t rounded to dt once, as an f64 CPU tensor.
Tensor rounded(const Tensor& t, DType dt) { return t.to(dt).to(DType::f64); }

// The compressed softmax's log-sum-exp [B, H, L] over the rows each query sees (-inf: none), f64.
Tensor true_lse(const Tensor& q, const Tensor& ck, const std::vector<int64_t>& pos, int64_t bc, double scale) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), hd = q.size(3), Nc = ck.size(1), Hk = ck.size(2);
  const auto qv = q.to_vector(), kv = ck.to_vector();
  std::vector<double> lse(static_cast<size_t>(B * H * L));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t seen = std::min(Nc, (pos[static_cast<size_t>(l)] + 1) / bc), kh = h / (H / Hk);
        double m = -std::numeric_limits<double>::infinity(), sum = 0;
        std::vector<double> s(static_cast<size_t>(seen));
        for (int64_t c = 0; c < seen; ++c) {
          double dot = 0;
          for (int64_t e = 0; e < hd; ++e)
            dot += qv[static_cast<size_t>(((b * L + l) * H + h) * hd + e)] *
                   kv[static_cast<size_t>(((b * Nc + c) * Hk + kh) * hd + e)];
          s[static_cast<size_t>(c)] = dot * scale;
          m = std::max(m, dot * scale);
        }
        for (double x : s) sum += std::exp(x - m);
        lse[static_cast<size_t>((b * H + h) * L + l)] = seen > 0 ? m + std::log(sum) : m;
      }
  return Tensor::from_vector({B, H, L}, lse, DType::f64);
}

class NsaScoresGpu : public ::testing::TestWithParam<ScoresCase> {};

TEST_P(NsaScoresGpu, MatchesCpu) {
  LCTX_REQUIRE_GPU();
  const ScoresCase& c = GetParam();
  const int64_t B = 2, H = 4, Hk = 2, S = c.seq, bc = c.compress_block, bs = c.select_block, hd = c.head_dim;
  // Zigzag rank 0 of 2: the first and the last quarter of the sequence.
  std::vector<int64_t> pos;
  for (int64_t p = 0; p < S / 4; ++p) pos.push_back(p);
  for (int64_t p = 3 * S / 4; p < S; ++p) pos.push_back(p);
  const int64_t L = static_cast<int64_t>(pos.size()), T = L / bs;
  const NsaScoring sc{.compress_block = bc, .select_block = bs, .blocks = S / bs, .softmax_scale = c.softmax_scale};
  const double scale = c.softmax_scale > 0 ? c.softmax_scale : 1.0 / std::sqrt(static_cast<double>(hd));
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor q = rounded(randn({B, L, H, hd}, 1), dt), ck = rounded(randn({B, S / bc, Hk, hd}, 2), dt);
    const Tensor lse = rounded(true_lse(q, ck, pos, bc, scale), DType::f32);
    const Tensor want = nsa_selection_scores(q, ck, lse, pos, sc);
    const Tensor got = nsa_selection_scores(q.to(dt).to(gpu), ck.to(dt).to(gpu), lse.to(DType::f32).to(gpu), pos, sc);
    ASSERT_EQ(got.dtype(), DType::f32);
    ASSERT_EQ(got.shape(), Shape({B * Hk * T, S / bs}));
    LCTX_EXPECT_CLOSE(got, want, 1e-5);
    const auto g = got.to_vector();
    for (int64_t e = 0; e < B * Hk * T; ++e) {
      const int64_t qb = pos[static_cast<size_t>(e % T * bs)] / bs;
      const double* row = g.data() + e * (S / bs);
      for (int64_t j = qb + 1; j < S / bs; ++j)
        ASSERT_EQ(row[j], 0.0) << dtype_name(dt) << " row " << e << " block " << j;
      if (bc % bs == 0) {  // the b_c / b_s blocks of compressed row c share its probability alone: equal
        for (int64_t j = 0; j <= qb; ++j)
          ASSERT_EQ(row[j], row[j / (bc / bs) * (bc / bs)]) << dtype_name(dt) << " row " << e << " block " << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Mixers, NsaScoresGpu,
    ::testing::Values(ScoresCase{"chunks_bc1_bs16", 2048, 1, 16, 64, 0.0f},  // 2048 compressed rows: 2 chunks
                      ScoresCase{"bc4_bs1_ties", 256, 4, 1, 64, 0.0f},
                      ScoresCase{"bc6_bs3_hd40", 288, 6, 3, 40, 0.3f},
                      ScoresCase{"bc7_bs5_neither", 200, 7, 5, 64, 0.0f},
                      ScoresCase{"bc8_bs32_hd128", 512, 8, 32, 128, 0.0f}),
    [](const auto& info) { return info.param.name; });

// The picks made on the GPU equal the CPU's on the same f32 scores: scores rounded to a few
// values (many ties), own blocks from 0 to the last, top_n from 2 to more than the blocks.
TEST(NsaPickBlocksGpu, EqualsCpu) {
  LCTX_REQUIRE_GPU();
  const int64_t R = 300, blocks = 700;
  Tensor s = randn({R, blocks}, 9);
  std::vector<double> v = s.to_vector();
  for (double& x : v) x = std::round(x * 2) / 2;  // ties
  const Tensor scores = Tensor::from_vector({R, blocks}, v, DType::f32);
  std::vector<int64_t> own(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) own[static_cast<size_t>(r)] = r * 7 % blocks;
  own[0] = 0;
  own[1] = blocks - 1;
  for (int64_t n : {2, 3, 16, 65, 800}) {
    const std::vector<int64_t> want = nsa_pick_blocks(scores.to(DType::f64), own, n);
    const std::vector<int64_t> got = nsa_pick_blocks(scores.to(Device::cuda(0)), own, n);
    EXPECT_EQ(got, want) << "top_n " << n;
  }
}

}  // namespace
