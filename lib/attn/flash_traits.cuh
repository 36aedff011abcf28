// Flash attention CUDA building blocks: tile sizes per kernel (traits), the XOR-swizzled
// shared-memory layout, and thin wrappers over the sm80+ instructions the kernels use
// (cp.async 16-byte copies, ldmatrix, mma.sync m16n8k16 with fp32 accumulation).
//
// Fragment layouts (g = lane / 4, t = lane % 4), m16n8k16:
//   A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 "col":      b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8:            c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
// so the C fragments of two adjacent n8 tiles are, packed to 16 bits, the A fragment of a
// 16x16 tile (P never leaves registers in the forward).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

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

// Element offset of (row, col) in a [rows][width] tile whose 16-byte chunks are XOR-swizzled
// by row % 8, so that ldmatrix's 8 rows of one chunk column hit 8 different bank groups.
// width is a multiple of 64 elements.
__device__ __forceinline__ int swz(int row, int col, int width) {
  return row * width + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies rows [row0, row0 + ROWS) of a [S, ..., D] head slice (row stride `stride`) into a
// swizzled [ROWS][D] tile; rows >= S become zeros. Each thread copies one 16-byte chunk
// column of every (THREADS / (D / 8))-th row: one global pointer and one shared offset per
// thread, the rest immediates (few live registers next to the kernels' accumulators).
template <int ROWS, int D, int THREADS, class T>
__device__ __forceinline__ void load_tile(T* tile, const T* g, int64_t stride, int64_t row0, int64_t S, int tid) {
  constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && ROWS % kRowStep == 0 && kRowStep % 8 == 0,
                "load_tile: threads must tile the rows in steps of the swizzle period");
  const int r0 = tid / kChunks, ch = tid % kChunks;
  const int64_t left = S - row0 - r0;  // rows of this thread's column still inside [0, S)
  const T* src = g + (row0 + r0) * stride + ch * 8;
  T* dst = tile + swz(r0, ch * 8, D);
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool valid = i * kRowStep < left;
    cp_async16(dst + i * kRowStep * D, valid ? src + i * kRowStep * stride : g, valid);
  }
}

// ldmatrix addressing without per-fragment swizzle arithmetic. A warp's x4 ldmatrix reads
// rows r0 + lr and 8-column chunk c0 / 8 + lc (lr, lc from the lane, r0 a multiple of 8,
// c0 of 16). Since a row is a multiple of 128 bytes and the swizzle only XORs the chunk bits
// (bits 4-6 of the byte address), the address is the lane's base with a compile-time XOR
// and offset: only a few base registers stay live, the rest are immediates.
//   kLanesRowsFirst: lr = lane % 8 + 8 * (lane / 8 % 2), lc = lane / 16
//     (A fragments of a [m][k] tile, B fragments of a [k][n] tile)
//   kLanesColsFirst: lr = lane % 8 + 8 * (lane / 16), lc = lane / 8 % 2
//     (A fragments of a [k][m] tile, B fragments of a [n][k] tile)
enum LdsmLanes { kLanesRowsFirst, kLanesColsFirst };
template <int W, LdsmLanes L>
__device__ __forceinline__ uint32_t ldsm_base(const void* tile, int lane) {
  const int lr = L == kLanesRowsFirst ? lane % 8 + 8 * (lane / 8 % 2) : lane % 8 + 8 * (lane / 16);
  const int lc = L == kLanesRowsFirst ? lane / 16 : lane / 8 % 2;
  return smem_addr(tile) + lr * W * 2 + (((lc ^ lr) & 7) << 4);
}
template <int W>
__device__ __forceinline__ uint32_t ldsm_at(uint32_t base, int r0, int c0) {
  return (base ^ (((c0 >> 3) & 7) << 4)) + r0 * W * 2 + ((c0 >> 3) & ~7) * 16;
}

// An opaque copy of x: the compiler cannot hoist what is derived from it out of the loop
// iteration it is taken in (keeps the XOR-ed ldmatrix addresses out of loop-long registers).
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// A fragment of the 16x16 block (rows m0.., cols k0..) of a [m][k] tile: base kLanesRowsFirst.
// The same call on a [k][m] tile with .trans (ldsm_x4_trans, base kLanesColsFirst, r0 = k0,
// c0 = m0) gives the A fragment of its transpose.
// B fragments of two n8 tiles (n0.., n0+8..) x k16 (k0..): b[0], b[1] for tile n0, b[2],
// b[3] for n0 + 8; from a [n][k] tile: ldsm_x4 at (n0, k0), base kLanesColsFirst; from a
// [k][n] tile: ldsm_x4_trans at (k0, n0), base kLanesRowsFirst.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to a packed pair of T (lower address = lo).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Stores the C fragments of two adjacent n8 tiles of one m16 tile (lo: cols c0.., hi: cols
// c0+8..), rounded to T, as the 16x16 block (r0.., c0..) of a swizzled [.][W] tile. Their
// registers are, packed, the A fragment of that block, so on sm_90 this is one stmatrix at
// the ldmatrix address (base: kLanesRowsFirst of the tile); older GPUs store per thread.
template <class T, int W>
__device__ __forceinline__ void stsm_c16(uint32_t base, T* tile, int lane, int r0, int c0, const float (&lo)[4],
                                         const float (&hi)[4]) {
  const uint32_t a0 = pack2<T>(lo[0], lo[1]), a1 = pack2<T>(lo[2], lo[3]);
  const uint32_t a2 = pack2<T>(hi[0], hi[1]), a3 = pack2<T>(hi[2], hi[3]);
#if __CUDA_ARCH__ >= 900
  (void)tile;
  (void)lane;
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(ldsm_at<W>(base, r0, c0)),
               "r"(a0), "r"(a1), "r"(a2), "r"(a3)
               : "memory");
#else
  (void)base;
  const int row = r0 + lane / 4, col = c0 + 2 * (lane % 4);
  *reinterpret_cast<uint32_t*>(tile + swz(row, col, W)) = a0;
  *reinterpret_cast<uint32_t*>(tile + swz(row + 8, col, W)) = a1;
  *reinterpret_cast<uint32_t*>(tile + swz(row, col + 8, W)) = a2;
  *reinterpret_cast<uint32_t*>(tile + swz(row + 8, col + 8, W)) = a3;
#endif
}

// 2^x on the SFU (ex2.approx.ftz; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace lctx::attn
