// Feature maps phi for linear attention (linear_attn.h), applied to each row (last axis) of
// [B, S, H, D] queries or keys, with their backward: phi(q) . phi(k) stands in for a softmax
// kernel, so attention becomes a recurrence over a fixed-size state.
//   identity      phi(x) = x
//   elu_plus_one  phi(x) = elu(x) + 1 > 0                              (Katharopoulos et al.)
//   relu          phi(x) = max(x, 0)
//   favor         FAVOR+ positive orthogonal random features (Performer, Choromanski et al.):
//                 phi(x)_i = exp(w_i . x~ - |x~|^2 / 2 - c) / sqrt(m), x~ = input_scale * x,
//                 i < m; E[phi(q) . phi(k)] = exp(q~ . k~) e^{-c_q - c_k}, which with the default
//                 scale D^{-1/4} is the softmax kernel exp(q . k / sqrt(D)).
// W [m, D] comes from favor_projection: a seed and the Philox RNG, so every rank draws the same
// features (a redraw is a new seed). The stabiliser c keeps exp in range. Queries (no
// stabiliser tensor): c is the row's max exponent, part of the map (the backward includes it);
// it scales o's numerator and normaliser alike. Keys: c is one constant per (batch, head) for
// the whole sequence, passed in (favor_key_stabiliser: the max exponent rounded up to an
// integer) and held constant by the backward, so all keys share one scale. Rounded, c is
// piecewise constant in k, so holding it is exact (almost everywhere) even where the output
// depends on it (a normaliser eps, or keys far below the max that underflow in fp32). Every
// piece of one sequence must use the same c: chained calls pass one c, and sequence
// parallelism all-reduces (MAX) each rank's favor_key_stabiliser.
// Devices: CPU f32/f64, CUDA f32/bf16/f16 with fp32 math (feature_map.cu); W and c in the wide
// dtype of x on x's device; x needs a contiguous last dimension.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lctx::linear_attn {

enum class FeatureKind { identity, elu_plus_one, relu, favor };

constexpr int64_t kFavorFeatures = 256;  // FAVOR+'s default feature count m (the Performer's)

struct FeatureMap {
  FeatureKind kind = FeatureKind::elu_plus_one;
  Tensor projection;         // favor: W [m, D] (favor_projection), wide dtype of x
  double input_scale = 0.0;  // favor: x~ = input_scale * x; 0 means D^{-1/4}
};

// FAVOR+'s W [features, head_dim] in `dtype` on the CPU (move it to x's device): blocks of head_dim orthonormal rows
// (Gram-Schmidt of a Gaussian matrix, in f64), the last block cut to the rows left, each row
// scaled by the norm of an independent Gaussian head_dim-vector (rows then have Gaussian
// lengths, as in the Performer). The same (head_dim, seed, features) give the same bits.
Tensor favor_projection(int64_t head_dim, uint64_t seed, int64_t features = kFavorFeatures, DType dtype = DType::f32);

// Columns of phi(x) for rows of head_dim columns: m for favor, head_dim otherwise.
int64_t feature_dim(const FeatureMap& fm, int64_t head_dim);

// The FAVOR+ key stabiliser of k [B, S, H, D]: [B, H], the max over the sequence and the
// features of w_i . k~ - |k~|^2 / 2, rounded up to an integer (wide dtype). Combine over
// pieces of a sequence with max.
Tensor favor_key_stabiliser(const Tensor& k, const FeatureMap& fm, Stream s = {});

// phi(x) [B, S, H, feature_dim], contiguous in x's dtype. `stabiliser` (favor only): [B, H]
// held constant (keys), or undefined for the per-row max (queries).
Tensor feature_map_forward(const Tensor& x, const FeatureMap& fm, const Tensor& stabiliser = {}, Stream s = {});

// dL/dx given dL/dphi (`dphi`, like phi) and the forward's x, map and stabiliser.
Tensor feature_map_backward(const Tensor& x, const Tensor& dphi, const FeatureMap& fm, const Tensor& stabiliser = {},
                            Stream s = {});

namespace detail {
// The CUDA halves (feature_map.cu): validated operands, outputs allocated; `scale` is x~'s.
void feature_map_forward_cuda(Tensor& phi, const Tensor& x, const FeatureMap& fm, const Tensor& stabiliser,
                              double scale, Stream s);
void feature_map_backward_cuda(Tensor& dx, const Tensor& x, const Tensor& dphi, const FeatureMap& fm,
                               const Tensor& stabiliser, double scale, Stream s);
void favor_key_stabiliser_cuda(Tensor& out, const Tensor& k, const FeatureMap& fm, double scale, Stream s);
}  // namespace detail

}  // namespace lctx::linear_attn
