// Ring attention (context parallelism) with lctx: causal attention over a sequence sharded in
// zigzag chunks across ranks, forward and backward, checked against flash attention over the
// whole sequence on one device.
//
// What it shows:
//  - dist::Layout: which tokens each rank holds (zigzag balances the causal work) and
//    shard/unshard between whole-sequence and per-rank tensors;
//  - dist::ring_attention_forward/backward: each rank passes its K/V block around the ring and
//    gets exact attention (output, log-sum-exp, gradients) for its own tokens;
//  - the same code over any dist::Comm: dist::run_simulated runs 4 ranks as threads of this
//    process on the CPU; under `mpirun -np N` on a node with N GPUs each process drives one GPU
//    through NCCL (dist::NcclComm, bootstrapped by dist::MpiComm), in bf16.
// Without mpirun: 4 simulated CPU ranks in f32. Under mpirun with fewer GPUs than ranks it says
// so and exits 0. Prints the largest difference from the whole-sequence result; exits 1 when it
// is above the tolerance.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "attn/flash.h"
#include "core/device.h"
#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mpi_comm.h"
#include "dist/ring_attention.h"
#include "dist/sim_comm.h"
#ifdef LCTX_HAVE_CUDA
#include "core/cuda_check.h"
#include "dist/nccl_comm.h"
#endif

using namespace lctx;

namespace {

constexpr int64_t kBatch = 1, kSeq = 512;
constexpr int64_t kHeads = 4, kKvHeads = 2, kHeadDim = 64;  // GQA: 2 query heads per K/V head

// Attention output and gradients of q, k, v (whole sequence, or one rank's tokens).
struct Result {
  Tensor o, dq, dk, dv;
};

// The whole-sequence q, k, v [B, S, H, D] and the upstream gradient dout; Philox draws depend
// only on the seed, so every rank builds the same tensors.
struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(DType dtype) {
  auto normal = [&](int64_t heads, uint64_t seed) {
    Tensor t = Tensor::empty({kBatch, kSeq, heads, kHeadDim}, DType::f32);
    rng_normal(t, seed, 0);
    return t.to(dtype);
  };
  return {normal(kHeads, 1), normal(kKvHeads, 2), normal(kKvHeads, 3), normal(kHeads, 4)};
}

attn::FlashOptions causal() {
  attn::FlashOptions o;
  o.mask = attn::Mask::causal;
  return o;
}

// The reference: flash attention over the whole sequence on the CPU, in f32.
Result whole_sequence(const Inputs& in) {
  auto f32 = [](const Tensor& t) { return t.to(DType::f32); };
  const attn::FlashOutput f = attn::flash_forward(f32(in.q), f32(in.k), f32(in.v), causal());
  const attn::FlashGrads g = attn::flash_backward(f32(in.q), f32(in.k), f32(in.v), f.o, f.lse, f32(in.dout), causal());
  return {f.o, g.dq, g.dk, g.dv};
}

// One rank of the ring: its tokens of q, k, v, dout (moved to `device`), then forward and
// backward over the ring. The results are this rank's tokens, back on the CPU.
Result ring_rank(dist::Comm& ring, const dist::Layout& layout, const Inputs& in, Device device) {
  auto mine = [&](const Tensor& t) { return layout.shard(t, ring.rank()).to(device); };
  const Tensor q = mine(in.q), k = mine(in.k), v = mine(in.v), dout = mine(in.dout);
  const attn::FlashOutput f = dist::ring_attention_forward(ring, layout, q, k, v, causal());
  const attn::FlashGrads g = dist::ring_attention_backward(ring, layout, q, k, v, f.o, f.lse, dout, causal());
  auto cpu = [](const Tensor& t) { return t.to(Device::cpu()); };
  return {cpu(f.o), cpu(g.dq), cpu(g.dk), cpu(g.dv)};
}

// Largest |a - b| over the four tensors, relative to the largest |b| (at least 1).
double max_difference(const Result& a, const Result& b) {
  double diff = 0, scale = 1;
  for (auto m : {&Result::o, &Result::dq, &Result::dk, &Result::dv}) {
    const std::vector<double> x = (a.*m).to_vector(), y = (b.*m).to_vector();
    for (size_t i = 0; i < x.size(); ++i) {
      diff = std::max(diff, std::abs(x[i] - y[i]));
      scale = std::max(scale, std::abs(y[i]));
    }
  }
  return diff / scale;
}

int report(const char* what, double diff, double tolerance) {
  std::printf("%s: max |ring - whole sequence| / max |whole sequence| = %.3e (tolerance %.0e)\n", what, diff,
              tolerance);
  return diff <= tolerance ? 0 : 1;
}

// 4 ranks as threads of this process, on the CPU, in f32.
int simulated_cpu() {
  const int ranks = 4;
  const dist::Layout layout(dist::LayoutKind::zigzag, kSeq, ranks);
  const Inputs in = make_inputs(DType::f32);
  std::vector<Result> parts(ranks);
  dist::run_simulated(ranks, [&](dist::Comm& ring) {
    parts[ring.rank()] = ring_rank(ring, layout, in, Device::cpu());
  });
  // The ranks' tokens put back in sequence order.
  auto whole = [&](Tensor Result::*m) {
    std::vector<Tensor> shards;
    for (const Result& p : parts) shards.push_back(p.*m);
    return layout.unshard(shards);
  };
  const Result ring{whole(&Result::o), whole(&Result::dq), whole(&Result::dk), whole(&Result::dv)};
  return report("4 simulated CPU ranks, zigzag, f32", max_difference(ring, whole_sequence(in)), 1e-4);
}

// One process per GPU under mpirun (one node: rank r drives GPU r): NCCL between the GPUs,
// bf16 compute with fp32 accumulation. Each rank checks its own tokens.
int nccl_gpus() {
  std::unique_ptr<dist::MpiComm> world = dist::MpiComm::world();
  if (cuda_device_count() < world->size()) {
    if (world->rank() == 0)
      std::printf("skipped: under mpirun this example runs one rank per GPU over NCCL (%d ranks, %d GPUs)\n",
                  world->size(), cuda_device_count());
    return 0;
  }
#ifdef LCTX_HAVE_CUDA  // cuda_device_count() is 0 without the CUDA backend
  const int device = world->rank();
  LCTX_CUDA_CHECK(cudaSetDevice(device));
  dist::NcclComm ring(*world, device);
  const dist::Layout layout(dist::LayoutKind::zigzag, kSeq, ring.size());
  const Inputs in = make_inputs(DType::bf16);
  const Result mine = ring_rank(ring, layout, in, Device::cuda(device));
  const Result ref = whole_sequence(in);
  auto my_tokens = [&](const Tensor& t) { return layout.shard(t, ring.rank()); };
  const Result expected{my_tokens(ref.o), my_tokens(ref.dq), my_tokens(ref.dk), my_tokens(ref.dv)};
  char what[96];
  std::snprintf(what, sizeof what, "rank %d of %d, GPU %d, NCCL, zigzag, bf16", ring.rank(), ring.size(), device);
  return report(what, max_difference(mine, expected), 3e-2);
#else
  return 0;
#endif
}

}  // namespace

int main() {
  try {
    return dist::launched_with_mpi() ? nccl_gpus() : simulated_cpu();
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
