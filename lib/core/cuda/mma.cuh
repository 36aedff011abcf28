// Warp-level matrix vocabulary for sm80+ tensor-core kernels (flash attention today; chunked
// linear attention and SSD next): the XOR-swizzled shared-memory tile layout, cp.async copies
// into it, ldmatrix / mma.sync m16n8k16 (fp32 accumulation) / stmatrix wrappers, fragment
// packing, and warp_tile_mma, the one loop that multiplies fragments read from two shared
// tiles. Namespace lctx (like core/cuda_types.cuh) so kernels of every area use it as is.
// Included only from .cu files.
//
// Fragment layouts (g = lane / 4, t = lane % 4), m16n8k16:
//   A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 "col":      b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8:            c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
// so the C fragments of two adjacent n8 tiles are, packed to 16 bits, the A fragment of a
// 16x16 tile (a product can feed the next one without leaving registers).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace lctx {

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

// An opaque copy of x: the compiler cannot hoist what is derived from it out of the loop
// iteration it is taken in (keeps the XOR-ed ldmatrix addresses out of loop-long registers),
// nor re-derive it from the values it was computed from.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}
template <class T>
__device__ __forceinline__ T* opaque(T* p) {
  asm volatile("" : "+l"(p));
  return p;
}

// How load_tile forms a thread's global row addresses: per_row, each from the slice and the
// row index; first_row, the first row's 64-bit address once (opaque) and row strides added to
// it (no 64-bit multiply per row: chunk kernels that load tiles every iteration).
enum class RowAddr { per_row, first_row };

// Copies rows [row0, row0 + ROWS) of a [S, ..., D] slice (row stride `stride`) into a
// swizzled [ROWS][D] tile; rows >= S become zeros. Each thread copies one 16-byte chunk
// column of every (THREADS / (D / 8))-th row: one global pointer and one shared offset per
// thread, the rest immediates (few live registers next to the kernels' accumulators).
template <int ROWS, int D, int THREADS, RowAddr A = RowAddr::per_row, class T>
__device__ __forceinline__ void load_tile(T* tile, const T* g, int64_t stride, int64_t row0, int64_t S, int tid) {
  constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && ROWS % kRowStep == 0 && kRowStep % 8 == 0,
                "load_tile: threads must tile the rows in steps of the swizzle period");
  const int r0 = tid / kChunks, ch = tid % kChunks;
  const int64_t left = S - row0 - r0;  // rows of this thread's column still inside [0, S)
  const T* src = g + (row0 + r0) * stride + ch * 8;
  if constexpr (A == RowAddr::first_row) src = opaque(src);
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

// How a B operand is stored in shared memory: [n][k] rows (read with ldmatrix, base
// kLanesColsFirst; K in Q K^T) or [k][n] rows (ldmatrix.trans, base kLanesRowsFirst; V in P V).
enum class BLayout { nk, kn };

// C += A B for one warp, both operands read from swizzled shared tiles: MT m16 row tiles of
// A (rows a_row0 + 16 mt of a [m][k] tile of width WA, base kLanesRowsFirst) times NT n8
// column tiles of B (columns b_col0 + 8 j of a tile of width WB laid out as LB), over K16
// steps of 16 along k from column / row 0. c[mt][j] is the C fragment of (m tile mt, n tile j).
// Per k step: the MT A fragments, then per pair of n tiles one B ldmatrix and 2 MT mma
// (every B fragment feeds MT mma). a_off / b_off are added to the ldmatrix addresses after
// the swizzle (double-buffer offsets, multiples of the 128-byte swizzle period). Only the pairs
// of n tiles nj in [nj0, nj1) are computed (warp-uniform bounds; a band of a masked product).
template <class T, int K16, int WA, int WB, BLayout LB, int MT, int NT>
__device__ __forceinline__ void warp_tile_mma(float (&c)[MT][NT][4], uint32_t a_base, uint32_t a_off, int a_row0,
                                              uint32_t b_base, uint32_t b_off, int b_col0, int nj0 = 0,
                                              int nj1 = NT / 2) {
  static_assert(NT % 2 == 0, "warp_tile_mma: B is read two n8 tiles at a time");
#pragma unroll
  for (int kk = 0; kk < K16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldsm_x4(a[mt], ldsm_at<WA>(a_base, a_row0 + 16 * mt, kk * 16) + a_off);
#pragma unroll
    for (int nj = 0; nj < NT / 2; ++nj) {
      if (nj < nj0 || nj >= nj1) continue;
      uint32_t b[4];
      if constexpr (LB == BLayout::nk) ldsm_x4(b, ldsm_at<WB>(b_base, b_col0 + nj * 16, kk * 16) + b_off);
      else ldsm_x4_trans(b, ldsm_at<WB>(b_base, kk * 16, b_col0 + nj * 16) + b_off);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<T>(c[mt][2 * nj], a[mt], b[0], b[1]);
        mma16816<T>(c[mt][2 * nj + 1], a[mt], b[2], b[3]);
      }
    }
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

}  // namespace lctx
