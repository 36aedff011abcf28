// Flash attention tile sizes per kernel (traits): block shapes, warps, shared-memory budget,
// and the measurements that chose them. The warp-level vocabulary the kernels are written in
// (swizzled tiles, cp.async, ldmatrix, mma.sync, stmatrix) is core/cuda/mma.cuh.
#pragma once

namespace lctx::attn {

// Forward: kBlockM query rows per block over kBlockM / 32 warps of 32 rows (two m16 tiles, so
// every K/V fragment read from shared memory feeds two mma), 8 warps per SM; 64-key tiles
// double buffered. Q is re-read from shared memory per tile (no room in registers next to
// the O accumulator). Measured on an H100 at S=16k, D=128: 64-key tiles beat 32-key ones by
// ~6% (316 vs 297 TFLOP/s); with the lazy rescale and one-pointer tile loads ptxas still
// spills ~32 bytes at D=128, a few reloads per tile (not the bottleneck). At D=128 one block
// of 256 rows per SM beats two of 128 (H100, bf16, H=16: 392-396 vs 375 TFLOP/s at S=16k,
// 395-399 vs 378-381 at S=64k; half the K/V bytes per FLOP through L2 and cp.async; the L2
// hit rate was already ~98% at S=64k); at D=64 it lost at S=16k causal, so D=64 keeps 128.
template <class T, int D>
struct FlashFwdTraits {
  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = D == 128 ? 256 : 128;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = kBlockM / 32;
  static constexpr int kWarpRows = 32;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinBlocks = 256 / kThreads;  // blocks per SM: 8 warps per SM
  static constexpr int kSmemElems = (kBlockM + 4 * kBlockN) * D;  // Q, K[2], V[2]
  static constexpr int kSmemBytes = kSmemElems * sizeof(T);
};

// Backward: one block per 128-key tile (all query heads of its KV group), query tiles of
// kBlockM rows double buffered (64 at D=128; 128 at D=64, where dK/dV leave the registers for
// it, as in FlashAttention-2), 8 warps. S/dP and dQ: warp w owns queries (kBlockM/2)*(w/4);
// S/dP keys 32*(w%4), dQ head dims (D/4)*(w%4). dK/dV: keys 32*(w%4), head-dim half w/4.
// H100, bf16, H=16, D=128
// fwd+bwd: lse2/Dsum by cp.async and P/dS by stmatrix took 315 -> 332 TFLOP/s at S=16k and
// 319 -> 337 at 64k (no more spills; the kernel is latency-bound at 8 warps per SM). Starting
// each key block at a different query tile, to spread the dQ atomics, lost 1-5%: blocks in
// lockstep share their Q/dO tiles in L2.
template <class T, int D>
struct FlashBwdTraits {
  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = D == 64 ? 128 : 64;
  static constexpr int kBlockN = 128;
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kQueryTiles = kBlockM / 32;  // m16 query tiles per warp in S/dP and dQ
  // K, V, Q[2], dO[2], P, dS (elements of T), then lse2[2], Dsum[2] (floats).
  static constexpr int kSmemElems = (2 * kBlockN + 4 * kBlockM) * D + 2 * kBlockM * kBlockN;
  static constexpr int kSmemBytes = kSmemElems * sizeof(T) + 4 * kBlockM * sizeof(float);
  // dQ partial sums per (batch, head, query tile): kBlockM * D floats in the order the warps'
  // mma fragments hold them (warp, fragment, lane, 4 floats), so that each fp32 16-byte
  // atomic of a warp covers 512 contiguous bytes.
  static constexpr int kDqFrags = kQueryTiles * (D / 32);  // float4 fragments per thread
};

}  // namespace lctx::attn
