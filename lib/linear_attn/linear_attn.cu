// Linear attention on CUDA (linear_attn.h): the chunked algorithm of linear_attn_reference.cpp,
// split along the sequence so that a (batch, head) pair fills many SMs without a state per chunk.
// Each (batch, state head) sequence is cut into splits of whole chunks, and the state columns
// (v's Dv, plus the z column when normalised) into tiles of kCols; a block owns one (column
// tile, split, batch x head) and keeps its state tile in fp32 registers while it walks its chunks.
//   forward:  states_kernel   each split's final state from zeros (S = e^{A_L} S + (K w)^T V) and
//                             its total log-decay;
//             scan_kernel     the affine scan over splits (dist/state_scan.h's combine, fp32):
//                             every split's entry state in place, and final_state;
//             output_kernel   per split from its entry state: U = e^A (Q S) + mask(Q K^T) V.
//   backward: the forward's states (and U when normalised, giving dU), then the mirror image:
//             states_kernel / scan_kernel in reverse for the state gradient at each split's exit
//             (seeded with d_final_state, ending in d_state0), dq_kernel walking forward with S,
//             dkdv_kernel walking backward with dS, and the decay kernels (decay_sums, then
//             decay_token or decay_head): the reverse cumsum of q.dq - k.dk per token plus
//             <S_T, dS_T>, over segments of the sequence.
// The non-causal form is the same code with one whole-sequence state (and its gradient) that
// every query (key) reads and no intra-chunk term. Gradients of column tiles and of state heads
// sharing an input head meet in fp32 atomics. Two implementations of the chunk kernels, picked
// per call (use_mma), with the same splits, workspace and scans:
//   tensor cores (states/output/row_grad/dv_mma_kernel): bf16/f16 inputs with Dk, Dv in {64, 128},
//     not normalised, rows readable by 16-byte cp.async. mma.sync m16n8k16 with fp32
//     accumulation from swizzled 16-bit tiles loaded one chunk ahead; as in fla's chunk
//     kernels, the state (gradient) is read as a 16-bit copy of its fp32 registers, and K w,
//     Q e^A and the decay-masked scores are rounded to 16 bits before their products. The
//     backward tiles each gradient so that a block owns what it writes: dq and dk by key-row
//     tiles (kRowTile: the block keeps those rows of S or dS over all Dv columns and recomputes
//     the chunk's scores over full dU and V rows), dv by column tiles (dS's columns, as the
//     forward). A gradient whose input head has one state head is then stored in 16 bits
//     directly (no fp32 sum, atomics, memset or conversion); shared heads still add into fp32.
//   fp32 (states/output/dq/dkdv_kernel), every other call: fp32 FMAs on CUDA cores from fp32
//     shared tiles (register-blocked per thread). Inputs bf16, f16 or f32; Dk up to
//     kMaxDimKCuda (tiles of 64, 128 or 256 rows), Dv up to kMaxDimVCuda.
// opts.chunk is the CPU's: chunks here are 64 tokens (32 for Dk > 128).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/allocator.h"
#include "core/cuda/affine_scan.cuh"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/launch.cuh"
#include "core/cuda/mma.cuh"
#include "core/cuda/reduce.cuh"
#include "core/cuda_check.h"
#include "core/phase_log.h"
#include "linear_attn/linear_attn_params.h"

namespace lctx::linear_attn {

namespace {

constexpr int kThreads = 256;  // a 16 x 16 grid of threads over every block product
constexpr int kCols = 64;      // state columns per block
// State rows (key dims) per block of row_grad_mma_kernel: all Dk rows when Dv is 64 (one tile,
// so every head's dU and V rows are read once), else 64.
template <int DK, int DV>
constexpr int kRowTile = DV == 64 ? DK : 64;

// Chunk length and shared-memory layout (floats; rows padded by one against bank conflicts)
// of the chunk kernels for Dk <= DK: q, k [C][DK], v, du [C][kCols], s [DK][kCols],
// p, g [C][C], cumulative log-decays a, e^{A_i} ea, e^{A_L - A_i} w [C].
template <int DK>
struct Tiles {
  static constexpr int C = DK > 128 ? 32 : 64;
  static constexpr int LK = DK + 1, LV = kCols + 1, LC = C + 1;
  static constexpr int kFloats = 2 * C * LK + 2 * C * LV + DK * LV + 2 * C * LC + 3 * C;
  static constexpr int kSmemBytes = kFloats * 4;
};

// Rows of a [B, S, heads, dim] tensor read by state head h (input head h / div); f32 or T.
struct Rows {
  const void* ptr = nullptr;
  int64_t stride[3] = {};
  int div = 1;
  bool f32 = false;
};

template <class T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return __half2float(x);
}
template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

template <class T>
__device__ __forceinline__ float load_row(const Rows& r, int64_t b, int64_t t, int h, int col) {
  const int64_t off = b * r.stride[0] + t * r.stride[1] + (h / r.div) * r.stride[2] + col;
  return r.f32 ? static_cast<const float*>(r.ptr)[off] : to_float(static_cast<const T*>(r.ptr)[off]);
}

// Everything a kernel reads: the call's shapes plus the workspace.
struct Work {
  int64_t batch = 0, seqlen = 0, nchunks = 0;
  int heads = 0, heads_q = 0, heads_k = 0, heads_v = 0, dim_k = 0, dim_v = 0, cols = 0;
  bool causal = true, normalize = false;
  bool mma = false;  // the tensor-core kernels (use_mma)
  int split_chunks = 1, nsplit = 1, ntiles = 1;
  Rows q, k, v, du;  // du: dout, or the fp32 dU rows [B, S, H, cols] when normalised
  const float* log_decay = nullptr;
  bool per_token = false;
  int64_t decay_stride[2] = {};
  // Tensor-core kernels with a decay: each chunk's cumulative log-decays [B, H, nchunks, 64]
  // (chunk_decays_kernel), loaded with the chunk's tiles.
  const float* cum_decay = nullptr;
  // output_kernel: o (T, dim_v columns) or the fp32 U rows [B, S, H, cols] (out_f32).
  void* out = nullptr;
  int64_t out_stride[3] = {};
  bool out_f32 = false;
  // States [B, H, nsplit, dim_k, cols]: the split entry states (forward) or exit gradients.
  float* states = nullptr;
  float* split_decay = nullptr;  // [B, H, nsplit]: total log-decay of each split
  const float* whole = nullptr;  // non-causal: the whole-sequence state (gradient)
  // Backward: fp32 gradient sums [B, S, heads_x, dim] and q.dq - k.dk per token [B, H, S].
  float *dq = nullptr, *dk = nullptr, *dv = nullptr, *dot = nullptr;
  // Tensor-core backward: a gradient whose input head has exactly one state head is owned by
  // the block that computes it (dq, dk: key-row tile; dv: column tile), so it is written in T
  // here (no fp32 sum, memset or conversion) and its fp32 sum above is unused.
  void *dq_out = nullptr, *dk_out = nullptr, *dv_out = nullptr;

  __host__ __device__ int ones_col() const { return normalize ? dim_v : -1; }  // v's z column
  __host__ __device__ int du_cols() const { return normalize ? cols : dim_v; }
};

// A block product's M x N fp32 accumulator: thread (ty, tx) = (tid / 16, tid % 16) of the
// 16 x 16 thread grid holds rows ty + 16 r and columns tx + 16 c.
template <int M, int N>
struct Acc {
  static_assert(M % 16 == 0 && N % 16 == 0, "Acc: block products are tiled by 16 x 16 threads");
  float v[M / 16][N / 16];
};

// f(i, j, acc(i, j)) for every element a thread holds.
template <int M, int N, class F>
__device__ __forceinline__ void for_acc(Acc<M, N>& acc, F&& f) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int r = 0; r < M / 16; ++r)
#pragma unroll
    for (int c = 0; c < N / 16; ++c) f(ty + 16 * r, tx + 16 * c, acc.v[r][c]);
}

template <int M, int N>
__device__ __forceinline__ void zero(Acc<M, N>& acc) {
  for_acc(acc, [](int, int, float& x) { x = 0.f; });
}

// acc(i, j) += sum_{kk < K} A(i, kk) B(kk, j) over the block, A(i, kk) = a[i ai + kk ak],
// B(kk, j) = b[kk bk + j bj] in shared memory (fp32 FMAs).
template <int M, int N>
__device__ __forceinline__ void block_gemm(Acc<M, N>& acc, int K, const float* a, int ai, int ak, const float* b,
                                           int bk, int bj) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  a += ty * ai;
  b += tx * bj;
#pragma unroll 4
  for (int kk = 0; kk < K; ++kk) {
    float ar[M / 16], br[N / 16];
#pragma unroll
    for (int r = 0; r < M / 16; ++r) ar[r] = a[16 * r * ai + kk * ak];
#pragma unroll
    for (int c = 0; c < N / 16; ++c) br[c] = b[kk * bk + 16 * c * bj];
#pragma unroll
    for (int r = 0; r < M / 16; ++r)
#pragma unroll
      for (int c = 0; c < N / 16; ++c) acc.v[r][c] = fmaf(ar[r], br[c], acc.v[r][c]);
  }
}

// Row sums over the 16 threads holding a row: part(i, j, x) gives each element's share, the
// thread with tx == 0 gets done(i, total).
template <int M, int N, class F, class G>
__device__ __forceinline__ void row_reduce(Acc<M, N>& acc, F&& part, G&& done) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int r = 0; r < M / 16; ++r) {
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < N / 16; ++c) sum += part(ty + 16 * r, tx + 16 * c, acc.v[r][c]);
#pragma unroll
    for (int o = 8; o >= 1; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (tx == 0) done(ty + 16 * r, sum);
  }
}

// Shared-memory tiles of a chunk kernel.
template <int DK>
struct Smem {
  using Tl = Tiles<DK>;
  float *q, *k, *v, *du, *s, *p, *g, *a, *ea, *w;
  __device__ explicit Smem(float* base) {
    q = base;
    k = q + Tl::C * Tl::LK;
    v = k + Tl::C * Tl::LK;
    du = v + Tl::C * Tl::LV;
    s = du + Tl::C * Tl::LV;
    p = s + DK * Tl::LV;
    g = p + Tl::C * Tl::LC;
    a = g + Tl::C * Tl::LC;
    ea = a + Tl::C;
    w = ea + Tl::C;
  }
};

// One block's place: column tile, split, batch and state head, and its chunk range.
struct Place {
  int tile, split, h;
  int64_t b, bh, chunk0, chunk1;
  __device__ explicit Place(const Work& wk) {
    tile = blockIdx.x;
    split = blockIdx.y;
    bh = blockIdx.z;
    b = bh / wk.heads;
    h = static_cast<int>(bh % wk.heads);
    chunk0 = static_cast<int64_t>(split) * wk.split_chunks;
    chunk1 = min(wk.nchunks, chunk0 + wk.split_chunks);
  }
  __device__ int col0() const { return tile * kCols; }
  __device__ int64_t state_offset(const Work& wk) const {
    return (bh * wk.nsplit + split) * static_cast<int64_t>(wk.dim_k) * wk.cols;
  }
};

// The loaders below read a whole tile into registers before storing any of it, so that a
// thread's global loads are all in flight at once (a load-store loop waits out each load).

// dst[i][j] = row t0 + i, column j of a q/k source (zeros past n rows or dim_k columns).
template <class T, int DK>
__device__ void load_keys(float* dst, const Rows& src, const Place& pl, int64_t t0, int n, int dim) {
  constexpr int C = Tiles<DK>::C, kPer = C * DK / kThreads;
  static_assert(C * DK % kThreads == 0, "load_keys: the tile must split evenly over the threads");
  float x[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kThreads, i = idx / DK, j = idx % DK;
    x[r] = i < n && j < dim ? load_row<T>(src, pl.b, t0 + i, pl.h, j) : 0.f;
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kThreads;
    dst[idx / DK * Tiles<DK>::LK + idx % DK] = x[r];
  }
}

// dst[i][j] = state column col0 + j of row t0 + i of a v/du source with `src_cols` columns;
// column `ones` (the z column of v when normalised, else -1) is 1.
template <class T, int DK>
__device__ void load_cols(float* dst, const Rows& src, const Place& pl, int64_t t0, int n, int src_cols, int ones) {
  constexpr int C = Tiles<DK>::C, kPer = C * kCols / kThreads;
  static_assert(C * kCols % kThreads == 0, "load_cols: the tile must split evenly over the threads");
  float x[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kThreads, i = idx / kCols, c = pl.col0() + idx % kCols;
    x[r] = 0.f;
    if (i < n) x[r] = c < src_cols ? load_row<T>(src, pl.b, t0 + i, pl.h, c) : (c == ones ? 1.f : 0.f);
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kThreads;
    dst[idx / kCols * Tiles<DK>::LV + idx % kCols] = x[r];
  }
}

// One warp: a[i] = cumulative log-decay A_i of the C chunk rows t0.. of (batch b, state head h)
// (rows past n add 0; a in shared or global memory).
template <int C>
__device__ void chunk_log_decays(float* a, const Work& wk, int64_t b, int h, int64_t t0, int n) {
  const int lane = threadIdx.x % 32;
  float run = 0.f;
  for (int base = 0; base < C; base += 32) {
    const int i = base + lane;
    float x = 0.f;
    if (wk.log_decay && i < n)
      x = wk.per_token ? wk.log_decay[b * wk.decay_stride[0] + (t0 + i) * wk.decay_stride[1] + h] : wk.log_decay[h];
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const float y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    a[i] = run + x;
    run += __shfl_sync(0xffffffffu, x, 31);
  }
}

// Work::cum_decay for the tensor-core kernels: a warp per (batch x head, chunk).
template <int C>
__global__ void chunk_decays_kernel(Work wk, float* cum) {
  const int64_t items = wk.batch * wk.heads * wk.nchunks, warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; item < items; item += warps) {
    const int64_t bh = item / wk.nchunks, t0 = item % wk.nchunks * C;
    chunk_log_decays<C>(cum + item * C, wk, bh / wk.heads, static_cast<int>(bh % wk.heads), t0,
                        static_cast<int>(min(static_cast<int64_t>(C), wk.seqlen - t0)));
  }
}

// a = cumulative log-decays A_i of the C chunk rows t0.. (rows past n add 0), ea = e^{A_i},
// w = e^{A_L - A_i} (shared memory). Needs a barrier before (a free) and gives one after.
template <int C>
__device__ void load_decays(float* a, float* ea, float* w, const Work& wk, const Place& pl, int64_t t0, int n) {
  if (threadIdx.x < 32) chunk_log_decays<C>(a, wk, pl.b, pl.h, t0, n);
  __syncthreads();
  const float al = a[C - 1];
  for (int i = threadIdx.x; i < C; i += kThreads) {
    ea[i] = expf(a[i]);
    w[i] = expf(al - a[i]);
  }
  __syncthreads();
}

// x[i][j] *= scale[i] for a [C][width] tile (leading dimension ld).
template <int DK>
__device__ void scale_rows(float* x, int ld, int width, const float* scale) {
  constexpr int C = Tiles<DK>::C;
  for (int idx = threadIdx.x; idx < C * width; idx += kThreads) x[idx / width * ld + idx % width] *= scale[idx / width];
}

// The C x C decay-masked product into dst: e^{A_i - A_j} acc(i, j) for j <= i, else 0.
template <int DK>
__device__ void store_masked(Acc<Tiles<DK>::C, Tiles<DK>::C>& acc, float* dst, const float* a) {
  constexpr int C = Tiles<DK>::C;
  for_acc(acc, [&](int i, int j, float& x) { dst[i * Tiles<DK>::LC + j] = j <= i ? x * expf(a[i] - a[j]) : 0.f; });
}

// The state tile held in registers <-> memory ([dim_k][cols] rows, column tile of pl).
template <int DK>
__device__ void state_load(Acc<DK, kCols>& st, const float* src, const Work& wk, const Place& pl) {
  for_acc(st, [&](int d, int j, float& x) {
    const int c = pl.col0() + j;
    x = src && d < wk.dim_k && c < wk.cols ? src[static_cast<int64_t>(d) * wk.cols + c] : 0.f;
  });
}
template <int DK>
__device__ void state_store(Acc<DK, kCols>& st, float* dst, const Work& wk, const Place& pl) {
  for_acc(st, [&](int d, int j, float& x) {
    const int c = pl.col0() + j;
    if (d < wk.dim_k && c < wk.cols) dst[static_cast<int64_t>(d) * wk.cols + c] = x;
  });
}
template <int DK>
__device__ void state_to_smem(Acc<DK, kCols>& st, float* s) {
  for_acc(st, [&](int d, int j, float& x) { s[d * Tiles<DK>::LV + j] = x; });
}

// st = e^{A_L} st + X^T Y over the chunk (X [C][DK] already scaled per row, Y [C][kCols]).
template <int DK>
__device__ void state_step(Acc<DK, kCols>& st, const float* x, const float* y, float decay) {
  using Tl = Tiles<DK>;
  for_acc(st, [&](int, int, float& v) { v *= decay; });
  block_gemm<DK, kCols>(st, Tl::C, x, 1, Tl::LK, y, Tl::LV, 1);
}

// Each split's state from zeros and total log-decay: forward S = e^{A_L} S + (K w)^T V over
// its chunks in order; `grads`: the state gradient dS = e^{A_L} dS + (Q e^A)^T dU in reverse.
template <class T, int DK>
__global__ void __launch_bounds__(kThreads) states_kernel(Work wk, bool grads) {
  using Tl = Tiles<DK>;
  extern __shared__ float smem[];
  const Smem<DK> sm(smem);
  const Place pl(wk);
  Acc<DK, kCols> st;
  zero(st);
  float total = 0.f;
  for (int64_t ci = pl.chunk0; ci < pl.chunk1; ++ci) {
    const int64_t c = grads ? pl.chunk1 - 1 - (ci - pl.chunk0) : ci, t0 = c * Tl::C;
    const int n = static_cast<int>(min(static_cast<int64_t>(Tl::C), wk.seqlen - t0));
    __syncthreads();
    load_keys<T, DK>(sm.q, grads ? wk.q : wk.k, pl, t0, n, wk.dim_k);
    load_cols<T, DK>(sm.v, grads ? wk.du : wk.v, pl, t0, n, grads ? wk.du_cols() : wk.dim_v,
                     grads ? -1 : wk.ones_col());
    load_decays<Tl::C>(sm.a, sm.ea, sm.w, wk, pl, t0, n);
    scale_rows<DK>(sm.q, Tl::LK, DK, grads ? sm.ea : sm.w);
    __syncthreads();
    state_step<DK>(st, sm.q, sm.v, sm.ea[Tl::C - 1]);
    total += sm.a[Tl::C - 1];
  }
  state_store<DK>(st, wk.states + pl.state_offset(wk), wk, pl);
  if (pl.tile == 0 && threadIdx.x == 0) wk.split_decay[pl.bh * wk.nsplit + pl.split] = total;
}

// The exclusive affine scan over splits, per (batch x head, state element), in fp32: forward
// x = init; per split: states[s] <- x, x = e^{a_s} x + states[s]; out = x. Reverse: the same
// from the last split (the state gradient at each split's exit, ending in d_state0).
__global__ void scan_kernel(float* __restrict__ states, const float* __restrict__ split_decay,
                            const float* __restrict__ init, float* __restrict__ out, int64_t nbh, int nsplit,
                            int64_t size, bool reverse) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < nbh * size;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bh = e / size, idx = e % size;
    float* base = states + bh * nsplit * size + idx;
    const float* decay = split_decay + bh * nsplit;
    out[e] = affine_scan_in_place(
        init ? init[e] : 0.f, nsplit, reverse, [&](int64_t s) -> float& { return base[s * size]; },
        [&](int64_t s) { return expf(decay[s]); });
  }
}

// U = e^A (Q S) + mask(Q K^T) V per chunk from each split's entry state (non-causal: Q S with
// the whole-sequence state), into o or the fp32 U rows.
template <class T, int DK>
__global__ void __launch_bounds__(kThreads) output_kernel(Work wk) {
  using Tl = Tiles<DK>;
  constexpr int C = Tl::C;
  extern __shared__ float smem[];
  const Smem<DK> sm(smem);
  const Place pl(wk);
  Acc<DK, kCols> st;
  state_load<DK>(st, wk.causal ? wk.states + pl.state_offset(wk) : wk.whole + pl.bh * wk.dim_k * wk.cols, wk, pl);
  const int out_cols = wk.out_f32 ? wk.cols : wk.dim_v;
  for (int64_t ci = pl.chunk0; ci < pl.chunk1; ++ci) {
    const int64_t t0 = ci * C;
    const int n = static_cast<int>(min(static_cast<int64_t>(C), wk.seqlen - t0));
    __syncthreads();
    load_keys<T, DK>(sm.q, wk.q, pl, t0, n, wk.dim_k);
    load_keys<T, DK>(sm.k, wk.k, pl, t0, n, wk.dim_k);
    load_cols<T, DK>(sm.v, wk.v, pl, t0, n, wk.dim_v, wk.ones_col());
    state_to_smem<DK>(st, sm.s);
    load_decays<Tl::C>(sm.a, sm.ea, sm.w, wk, pl, t0, n);
    if (wk.causal) {
      Acc<C, C> pa;
      zero(pa);
      block_gemm<C, C>(pa, DK, sm.q, Tl::LK, 1, sm.k, 1, Tl::LK);
      store_masked<DK>(pa, sm.p, sm.a);
    }
    Acc<C, kCols> u;
    zero(u);
    block_gemm<C, kCols>(u, DK, sm.q, Tl::LK, 1, sm.s, Tl::LV, 1);
    for_acc(u, [&](int i, int, float& x) { x *= sm.ea[i]; });
    __syncthreads();
    if (wk.causal) block_gemm<C, kCols>(u, C, sm.p, Tl::LC, 1, sm.v, Tl::LV, 1);
    for_acc(u, [&](int i, int j, float& x) {
      const int c = pl.col0() + j;
      if (i >= n || c >= out_cols) return;
      const int64_t off = pl.b * wk.out_stride[0] + (t0 + i) * wk.out_stride[1] + pl.h * wk.out_stride[2] + c;
      if (wk.out_f32) static_cast<float*>(wk.out)[off] = x;
      else static_cast<T*>(wk.out)[off] = from_float<T>(x);
    });
    if (wk.causal && ci + 1 < pl.chunk1) {
      scale_rows<DK>(sm.k, Tl::LK, DK, sm.w);
      __syncthreads();
      state_step<DK>(st, sm.k, sm.v, sm.ea[C - 1]);
    }
  }
}

// dq = e^A (dU S^T) + mask(dU V^T) K per chunk, walking each split forward with its state;
// fp32 atomics into wk.dq (column tiles and state heads sum), q.dq into wk.dot.
template <class T, int DK>
__global__ void __launch_bounds__(kThreads) dq_kernel(Work wk) {
  using Tl = Tiles<DK>;
  constexpr int C = Tl::C;
  extern __shared__ float smem[];
  const Smem<DK> sm(smem);
  const Place pl(wk);
  const int hq = pl.h / (wk.heads / wk.heads_q);
  Acc<DK, kCols> st;
  state_load<DK>(st, wk.causal ? wk.states + pl.state_offset(wk) : wk.whole + pl.bh * wk.dim_k * wk.cols, wk, pl);
  for (int64_t ci = pl.chunk0; ci < pl.chunk1; ++ci) {
    const int64_t t0 = ci * C;
    const int n = static_cast<int>(min(static_cast<int64_t>(C), wk.seqlen - t0));
    __syncthreads();
    if (wk.dot) load_keys<T, DK>(sm.q, wk.q, pl, t0, n, wk.dim_k);
    load_keys<T, DK>(sm.k, wk.k, pl, t0, n, wk.dim_k);
    load_cols<T, DK>(sm.v, wk.v, pl, t0, n, wk.dim_v, wk.ones_col());
    load_cols<T, DK>(sm.du, wk.du, pl, t0, n, wk.du_cols(), -1);
    state_to_smem<DK>(st, sm.s);
    load_decays<Tl::C>(sm.a, sm.ea, sm.w, wk, pl, t0, n);
    if (wk.causal) {
      Acc<C, C> ga;
      zero(ga);
      block_gemm<C, C>(ga, kCols, sm.du, Tl::LV, 1, sm.v, 1, Tl::LV);
      store_masked<DK>(ga, sm.g, sm.a);
    }
    Acc<C, DK> dq;
    zero(dq);
    block_gemm<C, DK>(dq, kCols, sm.du, Tl::LV, 1, sm.s, 1, Tl::LV);
    for_acc(dq, [&](int i, int, float& x) { x *= sm.ea[i]; });
    __syncthreads();
    if (wk.causal) block_gemm<C, DK>(dq, C, sm.g, Tl::LC, 1, sm.k, Tl::LK, 1);
    for_acc(dq, [&](int i, int d, float& x) {
      if (i < n && d < wk.dim_k)
        atomicAdd(wk.dq + ((pl.b * wk.seqlen + t0 + i) * wk.heads_q + hq) * wk.dim_k + d, x);
    });
    if (wk.dot)
      row_reduce(
          dq, [&](int i, int d, float x) { return x * sm.q[i * Tl::LK + d]; },
          [&](int i, float sum) {
            if (i < n) atomicAdd(wk.dot + pl.bh * wk.seqlen + t0 + i, sum);
          });
    if (wk.causal && ci + 1 < pl.chunk1) {
      __syncthreads();
      scale_rows<DK>(sm.k, Tl::LK, DK, sm.w);
      __syncthreads();
      state_step<DK>(st, sm.k, sm.v, sm.ea[C - 1]);
    }
  }
}

// dv = w (K dS) + mask(Q K^T)^T dU and dk = w (V dS^T) + mask(dU V^T)^T Q per chunk, walking
// each split backward from the state gradient at its exit (non-causal: the whole-sequence
// state gradient, w = 1); fp32 atomics into wk.dk / wk.dv, -k.dk into wk.dot.
template <class T, int DK>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(Work wk) {
  using Tl = Tiles<DK>;
  constexpr int C = Tl::C;
  extern __shared__ float smem[];
  const Smem<DK> sm(smem);
  const Place pl(wk);
  const int hk = pl.h / (wk.heads / wk.heads_k), hv = pl.h / (wk.heads / wk.heads_v);
  Acc<DK, kCols> st;
  state_load<DK>(st, wk.causal ? wk.states + pl.state_offset(wk) : wk.whole + pl.bh * wk.dim_k * wk.cols, wk, pl);
  for (int64_t ci = pl.chunk1 - 1; ci >= pl.chunk0; --ci) {
    const int64_t t0 = ci * C;
    const int n = static_cast<int>(min(static_cast<int64_t>(C), wk.seqlen - t0));
    __syncthreads();
    load_keys<T, DK>(sm.q, wk.q, pl, t0, n, wk.dim_k);
    load_keys<T, DK>(sm.k, wk.k, pl, t0, n, wk.dim_k);
    load_cols<T, DK>(sm.v, wk.v, pl, t0, n, wk.dim_v, wk.ones_col());
    load_cols<T, DK>(sm.du, wk.du, pl, t0, n, wk.du_cols(), -1);
    state_to_smem<DK>(st, sm.s);
    load_decays<Tl::C>(sm.a, sm.ea, sm.w, wk, pl, t0, n);
    if (wk.causal) {
      Acc<C, C> pa;
      zero(pa);
      block_gemm<C, C>(pa, DK, sm.q, Tl::LK, 1, sm.k, 1, Tl::LK);
      store_masked<DK>(pa, sm.p, sm.a);
      zero(pa);
      block_gemm<C, C>(pa, kCols, sm.du, Tl::LV, 1, sm.v, 1, Tl::LV);
      store_masked<DK>(pa, sm.g, sm.a);
    }
    __syncthreads();
    {
      Acc<C, kCols> dv;
      zero(dv);
      block_gemm<C, kCols>(dv, DK, sm.k, Tl::LK, 1, sm.s, Tl::LV, 1);
      if (wk.causal) {
        for_acc(dv, [&](int j, int, float& x) { x *= sm.w[j]; });
        block_gemm<C, kCols>(dv, C, sm.p, 1, Tl::LC, sm.du, Tl::LV, 1);
      }
      for_acc(dv, [&](int j, int c, float& x) {
        c += pl.col0();
        if (j < n && c < wk.dim_v)
          atomicAdd(wk.dv + ((pl.b * wk.seqlen + t0 + j) * wk.heads_v + hv) * wk.dim_v + c, x);
      });
    }
    Acc<C, DK> dk;
    zero(dk);
    block_gemm<C, DK>(dk, kCols, sm.v, Tl::LV, 1, sm.s, 1, Tl::LV);
    if (wk.causal) {
      for_acc(dk, [&](int j, int, float& x) { x *= sm.w[j]; });
      block_gemm<C, DK>(dk, C, sm.g, 1, Tl::LC, sm.q, Tl::LK, 1);
    }
    for_acc(dk, [&](int j, int d, float& x) {
      if (j < n && d < wk.dim_k)
        atomicAdd(wk.dk + ((pl.b * wk.seqlen + t0 + j) * wk.heads_k + hk) * wk.dim_k + d, x);
    });
    if (wk.dot)
      row_reduce(
          dk, [&](int j, int d, float x) { return x * sm.k[j * Tl::LK + d]; },
          [&](int j, float sum) {
            if (j < n) atomicAdd(wk.dot + pl.bh * wk.seqlen + t0 + j, -sum);
          });
    if (wk.causal && ci > pl.chunk0) {
      __syncthreads();
      scale_rows<DK>(sm.q, Tl::LK, DK, sm.ea);
      __syncthreads();
      state_step<DK>(st, sm.q, sm.du, sm.ea[C - 1]);
    }
  }
}

// ---- Tensor-core path: 16-bit inputs, Dk and Dv in {64, 128}, not normalised (Work::mma) ----
// The same kernels' math with mma.sync m16n8k16 (fp32 accumulation) from swizzled 16-bit
// shared tiles (core/cuda/mma.cuh), filled by cp.async one chunk ahead (two buffers). The
// state (gradient) stays fp32 in registers as C fragments; the products read it as a 16-bit
// tile rewritten each chunk, K w (Q e^A) is rounded to 16 bits in the A fragments and the
// decay-masked scores go to A fragments in registers, as fla's chunk kernels do.

template <class T, int DK>
constexpr bool kHasMma = !std::is_same_v<T, float> && DK <= 128;

// Shared memory of the tensor-core kernels (C = 64) over X tiles of XW columns (keys, queries
// or key-row tiles of them) and Y tiles of YW columns (values or dU, column tiles or whole
// rows), in this order: states_mma_kernel x [2][C][XW], y [2][C][YW]; the others q, k
// [2][C][XW], v, du [2][C][YW] (output: no du; dv: no v), s [XW][YW]; all then the fp32
// cumulative log-decays a [2][C] (ChunkDecay), double-buffered with the tiles.
template <int XW, int YW>
struct MmaTiles {
  static constexpr int C = 64, kX = C * XW, kY = C * YW;
  static constexpr int kDecayBytes = 2 * C * 4;  // a [2][C]
  static constexpr int kStatesBytes = (2 * kX + 2 * kY) * 2 + kDecayBytes;
  static constexpr int kOneYBytes = (4 * kX + 2 * kY + XW * YW) * 2 + kDecayBytes;  // output, dv
  static constexpr int kGradBytes = (4 * kX + 4 * kY + XW * YW) * 2 + kDecayBytes;  // dq, dk
  static_assert(Tiles<128>::C == C, "MmaTiles: the chunk must be the fp32 path's (same splits)");
};

// The shared tiles of output/row_grad/dv_mma_kernel (v and du where the kernel reads them).
template <class T, int XW, int YW>
struct MmaSmem {
  using Tl = MmaTiles<XW, YW>;
  T *q, *k, *v, *du, *s;
  float* a;
  __device__ MmaSmem(unsigned char* raw, bool has_v, bool has_du) {
    q = reinterpret_cast<T*>(raw);
    k = q + 2 * Tl::kX;
    v = k + 2 * Tl::kX;
    du = v + (has_v ? 2 * Tl::kY : 0);
    s = du + (has_du ? 2 * Tl::kY : 0);
    a = reinterpret_cast<float*>(s + XW * YW);
  }
};

// A chunk's cumulative log-decays a[0..C) in shared memory and the factors the chunk kernels
// scale rows by, formed where used (ex2 on the SFU): e^{A_i} (a query's decay since the chunk's
// start) and e^{A_L - A_i} (a key's decay to its end); e^{A_L} decays the state.
enum class Factor { ea, w };
template <int C>
struct ChunkDecay {
  const float* a;
  __device__ float factor(Factor f, int i) const {
    return fast_exp2((f == Factor::ea ? a[i] : a[C - 1] - a[i]) * kLog2e);
  }
  __device__ float total() const { return a[C - 1]; }
};

// Chunk c's cumulative log-decays into buffer buf of a [2][C] (cp.async from Work::cum_decay, or
// zeros without a decay); waited for with the chunk's tiles.
template <int C>
__device__ __forceinline__ void load_chunk_decays(float* a, int buf, const Work& wk, const Place& pl, int64_t c) {
  static_assert(C % 4 == 0 && C / 4 <= kThreads, "load_chunk_decays: a thread per 16 bytes");
  float* const dst = a + buf * C;
  if (!wk.cum_decay) {
    if (threadIdx.x < C) dst[threadIdx.x] = 0.f;
  } else if (threadIdx.x < C / 4) {
    cp_async16(dst + 4 * threadIdx.x, wk.cum_decay + (pl.bh * wk.nchunks + c) * C + 4 * threadIdx.x, true);
  }
}

// Row 0 of the (batch, head) slice of a 16-bit q/k/v/dout source (head h / div).
template <class T>
__device__ __forceinline__ const T* slice(const Rows& r, const Place& pl) {
  return static_cast<const T*>(r.ptr) + pl.b * r.stride[0] + (pl.h / r.div) * r.stride[2];
}

// Chunk `c` of a source into buffer `buf` of a [2][C][W] tile (rows past the sequence zero).
template <class T, int W>
__device__ __forceinline__ void load_chunk(T* tile, int buf, const T* g, const Rows& r, int64_t c, const Work& wk) {
  constexpr int C = MmaTiles<64, 64>::C;
  load_tile<C, W, kThreads, RowAddr::first_row>(tile + buf * C * W, g, r.stride[1], c * C, wk.seqlen, threadIdx.x);
}

// A packed pair of T (lower address = x) as floats.
template <class T>
__device__ __forceinline__ float2 unpack2(uint32_t x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
  else return __half22float2(*reinterpret_cast<const __half2*>(&x));
}

// A packed pair of T times (lo, hi), rounded back to T.
template <class T>
__device__ __forceinline__ uint32_t scale2(uint32_t x, float lo, float hi) {
  const float2 f = unpack2<T>(x);
  return pack2<T>(f.x * lo, f.y * hi);
}

// A warp's C fragments of a 16 x 8 NT block at rows m0.., columns n0..: f(row, column, x)
// for each element the thread holds (g = lane / 4, t = lane % 4: rows m0 + g, + 8, columns
// n0 + 8 j + 2 t, + 1).
template <int NT, class F>
__device__ __forceinline__ void frag_each(float (&c)[1][NT][4], int m0, int n0, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) f(m0 + g + 8 * (e / 2), n0 + 8 * j + 2 * t + e % 2, c[0][j][e]);
}

// f(q, x, y) for the column pairs (col, col + 1) the thread holds of the warp's fragments
// (rows m0.., columns n0..), in rows r < n; q points at (r, col) of `rows` (row stride ld). The
// thread's first row address is formed once, the second is 8 rows on.
template <int NT, class P, class F>
__device__ __forceinline__ void frag_pairs(float (&c)[1][NT][4], P* rows, int64_t ld, int m0, int n0, int n, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  P* const q = rows + (m0 + g) * ld + n0 + 2 * t;
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    if (m0 + g + 8 * hi >= n) continue;
#pragma unroll
    for (int j = 0; j < NT; ++j) f(q + 8 * hi * ld + 8 * j, c[0][j][2 * hi], c[0][j][2 * hi + 1]);
  }
}

// The fragments added to fp32 sums `rows` (row stride ld, contiguous 16-byte aligned columns).
// On sm_90 one 16-byte vector atomic per 4 columns: lanes t and t ^ 1 of a quad swap a column
// pair, so the even lane adds columns 2t..2t+3 of row g and the odd one columns 2t-2..2t+1 of
// row g + 8.
template <int NT>
__device__ __forceinline__ void frag_atomic_add(float (&c)[1][NT][4], float* rows, int64_t ld, int m0, int n0,
                                                int n) {
#if __CUDA_ARCH__ >= 900
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool odd = t & 1;
  const int r = m0 + g + (odd ? 8 : 0);
  float* const q = rows + r * ld + n0 + 2 * (t & ~1);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const float x = __shfl_xor_sync(0xffffffffu, odd ? c[0][j][0] : c[0][j][2], 1);
    const float y = __shfl_xor_sync(0xffffffffu, odd ? c[0][j][1] : c[0][j][3], 1);
    const float4 v = odd ? make_float4(x, y, c[0][j][2], c[0][j][3]) : make_float4(c[0][j][0], c[0][j][1], x, y);
    if (r < n) atomicAdd(reinterpret_cast<float4*>(q + 8 * j), v);
  }
#else
  frag_pairs(c, rows, ld, m0, n0, n, [](float* q, float x, float y) {
    atomicAdd(q, x);
    atomicAdd(q + 1, y);
  });
#endif
}

// The fragments rounded to T into a 16-bit tensor `rows` (row stride ld, contiguous columns;
// one 4-byte store per column pair).
template <class T, int NT>
__device__ __forceinline__ void frag_store(float (&c)[1][NT][4], T* rows, int64_t ld, int m0, int n0, int n) {
  frag_pairs(c, rows, ld, m0, n0, n,
             [](T* q, float x, float y) { *reinterpret_cast<uint32_t*>(q) = pack2<T>(x, y); });
}

// A backward kernel's gradient fragments (rows r < n): stored in T into `out` when the block
// owns them (Work::dq_out etc.), else added to the fp32 sum `sum`; row r of either [B, S,
// heads_x, dim] tensor starts at element offset off + r ld.
template <class T, int NT>
__device__ __forceinline__ void frag_write(float (&c)[1][NT][4], int m0, int n0, int n, void* out, float* sum,
                                           int64_t off, int64_t ld) {
  if (out) frag_store<T>(c, static_cast<T*>(out) + off, ld, m0, n0, n);
  else frag_atomic_add(c, sum + off, ld, m0, n0, n);
}

// The 16-column blocks [lo, hi) of a warp's 16 x C causal scores (rows m0..) that the mask
// keeps: queries against keys j <= i (columns below m0 + 16), or transposed keys against
// queries i >= j (columns from m0). Score products and masks skip the rest (zeros).
struct Band {
  int lo, hi;
};
enum class Scores { queries_keys, keys_queries };
template <int C>
__device__ __forceinline__ Band causal_band(int m0, Scores rows) {
  return rows == Scores::queries_keys ? Band{0, m0 / 16 + 1} : Band{m0 / 16, C / 16};
}

// The row block (16 rows) of warp w in the 4 x 2 warp grid of the chunk kernels: warps w and
// w + 4 (one SM sub-partition) take row blocks r and 3 - r, so the causal band's work is the
// same on every sub-partition.
__device__ __forceinline__ int warp_row0(int warp) { return 16 * (warp & 4 ? 3 - (warp & 3) : warp & 3); }

// The warp's 16 x C scores of rows m0.. against the chunk, decay-masked in place within `band`:
// entry (r, c) is (i, j) = (r, c) (keys_queries: (c, r)) and becomes e^{A_i - A_j} x for
// j <= i, else 0 (x alone without a decay: all A are 0). Two passes over the band's 16-column
// blocks: the decay factors (A_r read once per row, A_c as a pair per column pair), then the
// zeros, which only the diagonal block (columns m0..) has: there the test is the lane's own,
// row g + 8 (e / 2) against column 8 h + 2 t + e % 2 of the block.
template <int C>
__device__ __forceinline__ void mask_scores(float (&p)[1][C / 8][4], const float* a, int m0, Scores rows, Band band,
                                            bool decay) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool qk = rows == Scores::queries_keys;
  if (decay) {
    const float ar[2] = {a[m0 + g], a[m0 + g + 8]};
#pragma unroll
    for (int kb = 0; kb < C / 16; ++kb) {
      if (kb < band.lo || kb >= band.hi) continue;
#pragma unroll
      for (int jt = 2 * kb; jt < 2 * kb + 2; ++jt) {
        const float2 ac = *reinterpret_cast<const float2*>(a + 8 * jt + 2 * t);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float a_r = ar[e / 2], a_c = e % 2 ? ac.y : ac.x;
          p[0][jt][e] *= fast_exp2((qk ? a_r - a_c : a_c - a_r) * kLog2e);
        }
      }
    }
  }
#pragma unroll
  for (int kb = 0; kb < C / 16; ++kb) {
    if (16 * kb != m0) continue;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int rr = g + 8 * (e % 4 / 2), cc = 8 * (e / 4) + 2 * t + e % 2;
      if (qk ? cc > rr : rr > cc) p[0][2 * kb + e / 4][e % 4] = 0.f;
    }
  }
}

// acc += P B for the warp's 16 x C scores P (C fragments, packed to A fragments) and B the
// swizzled [C][W] tile (base kLanesRowsFirst) at columns n0..; only the k steps of the band
// (P is zero elsewhere).
template <class T, int C, int W, int NT>
__device__ __forceinline__ void scores_mma(float (&acc)[1][NT][4], const float (&p)[1][C / 8][4], uint32_t b_base,
                                           int n0, Band band) {
#pragma unroll
  for (int kk = 0; kk < C / 16; ++kk) {
    if (kk < band.lo || kk >= band.hi) continue;
    const uint32_t pa[4] = {pack2<T>(p[0][2 * kk][0], p[0][2 * kk][1]), pack2<T>(p[0][2 * kk][2], p[0][2 * kk][3]),
                            pack2<T>(p[0][2 * kk + 1][0], p[0][2 * kk + 1][1]),
                            pack2<T>(p[0][2 * kk + 1][2], p[0][2 * kk + 1][3])};
#pragma unroll
    for (int nj = 0; nj < NT / 2; ++nj) {
      uint32_t b[4];
      ldsm_x4_trans(b, ldsm_at<W>(b_base, 16 * kk, n0 + 16 * nj));
      mma16816<T>(acc[0][2 * nj], pa, b[0], b[1]);
      mma16816<T>(acc[0][2 * nj + 1], pa, b[2], b[3]);
    }
  }
}

// acc(r, .) *= the chunk's factor f of row r over the warp's fragments (rows m0..).
template <int C, int NT>
__device__ __forceinline__ void scale_frag_rows(float (&acc)[1][NT][4], const ChunkDecay<C>& d, Factor f, int m0) {
  const int g = threadIdx.x % 32 / 4;
  const float lo = d.factor(f, m0 + g), hi = d.factor(f, m0 + g + 8);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    acc[0][j][0] *= lo;
    acc[0][j][1] *= lo;
    acc[0][j][2] *= hi;
    acc[0][j][3] *= hi;
  }
}

// dot[r] += sign * (x(r, .) . X(r, d0..)) over the warp's 16 x 8 NT fragments x (rows m0..,
// key dims d0..) and the swizzled [C][DK] tile X, for rows r < n (q.dq and -k.dk per token;
// the quads of a row reduce first). A thread's column pair (d, d + 1), d even, lies in one
// 16-byte chunk: one 4-byte load. With d0 a multiple of 8 NT, the chunk of pair j is the first
// pair's chunk XOR j (offset o ^ 8 j), and row r + 8 has row r's swizzle (offset + 8 DK).
template <int DK, int NT, class T>
__device__ __forceinline__ void add_row_dots(float (&x)[1][NT][4], const T* tile, int m0, int d0, int n, float* dot,
                                             float sign) {
  static_assert(NT <= 8 && (NT & (NT - 1)) == 0, "add_row_dots: pair chunks as XOR-ed offsets");
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int o = swz(m0 + g, d0 + 2 * t, DK);
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int r = m0 + g + 8 * hi;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float2 v = unpack2<T>(*reinterpret_cast<const uint32_t*>(tile + ((o ^ 8 * j) + 8 * hi * DK)));
      sum += x[0][j][2 * hi] * v.x + x[0][j][2 * hi + 1] * v.y;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (t == 0 && r < n) atomicAdd(dot + r, sign * sum);
  }
}

// The state (gradient) a tensor-core chunk kernel starts from: its split's (entry state or
// exit gradient), or non-causal the whole-sequence one.
__device__ __forceinline__ const float* start_state(const Work& wk, const Place& pl) {
  return wk.causal ? wk.states + pl.state_offset(wk) : wk.whole + pl.bh * wk.dim_k * wk.cols;
}

// A block's fp32 state tile [ROWS][COLS] (a column tile [DK][kCols], or a key-row tile
// [kRowTile][Dv]) as mma C fragments: warp w holds rows m0 = 16 (w % RW) .. m0 + 15 and the NT n8
// column tiles from n0 = 8 NT (w / RW).
template <int ROWS, int COLS>
struct StateFrag {
  static constexpr int RW = ROWS / 16 < 8 ? ROWS / 16 : 8, NT = COLS / 8 / (8 / RW);
  static_assert(RW * (8 / RW) == kThreads / 32 && 16 * RW == ROWS, "StateFrag: 8 warps tile the state");
  float c[1][NT][4];
  int m0, n0;

  __device__ StateFrag() {
    const int warp = threadIdx.x / 32;
    m0 = 16 * (warp % RW);
    n0 = 8 * NT * (warp / RW);
  }
  // The block of rows row0.., columns col0.. of a [dim_k][cols] state (src nullptr: zeros).
  __device__ void load(const float* src, const Work& wk, int row0, int col0) {
    frag_each(c, m0, n0, [&](int d, int j, float& x) {
      d += row0;
      j += col0;
      x = src && d < wk.dim_k && j < wk.cols ? src[static_cast<int64_t>(d) * wk.cols + j] : 0.f;
    });
  }
  __device__ void store(float* dst, const Work& wk, int row0, int col0) {
    frag_each(c, m0, n0, [&](int d, int j, float& x) {
      d += row0;
      j += col0;
      if (d < wk.dim_k && j < wk.cols) dst[static_cast<int64_t>(d) * wk.cols + j] = x;
    });
  }
  // The state rounded to T into the swizzled [ROWS][COLS] tile s.
  template <class T>
  __device__ void to_tile(T* s) {
    const int lane = threadIdx.x % 32;
    const uint32_t base = ldsm_base<COLS, kLanesRowsFirst>(s, lane);
#pragma unroll
    for (int jj = 0; jj < NT / 2; ++jj)
      stsm_c16<T, COLS>(base, s, lane, m0, n0 + 16 * jj, c[0][2 * jj], c[0][2 * jj + 1]);
  }
  // c = e^{A_L} c + (diag(f) X)^T Y over the C chunk rows: X the swizzled [C][ROWS] tile, Y
  // the swizzled [C][COLS] tile, f the chunk's factor per row.
  template <class T, int C>
  __device__ void step(const T* x, const T* y, const ChunkDecay<C>& d, Factor f) {
    const int lane = threadIdx.x % 32, t = lane % 4;
    const uint32_t xb = ldsm_base<ROWS, kLanesColsFirst>(x, lane), yb = ldsm_base<COLS, kLanesRowsFirst>(y, lane);
    const float decay = expf(d.total());
    frag_each(c, 0, 0, [&](int, int, float& v) { v *= decay; });
#pragma unroll
    for (int kk = 0; kk < C / 16; ++kk) {
      uint32_t a[4];  // A fragment of X^T: rows m0.. (key dims), k = chunk rows 16 kk..
      ldsm_x4_trans(a, ldsm_at<ROWS>(xb, 16 * kk, m0));
      const int r = 16 * kk + 2 * t;
      const float f0 = d.factor(f, r), f1 = d.factor(f, r + 1), f8 = d.factor(f, r + 8), f9 = d.factor(f, r + 9);
      a[0] = scale2<T>(a[0], f0, f1);
      a[1] = scale2<T>(a[1], f0, f1);
      a[2] = scale2<T>(a[2], f8, f9);
      a[3] = scale2<T>(a[3], f8, f9);
#pragma unroll
      for (int nj = 0; nj < NT / 2; ++nj) {
        uint32_t b[4];
        ldsm_x4_trans(b, ldsm_at<COLS>(yb, 16 * kk, n0 + 16 * nj));
        mma16816<T>(c[0][2 * nj], a, b[0], b[1]);
        mma16816<T>(c[0][2 * nj + 1], a, b[2], b[3]);
      }
    }
  }
};

// states_kernel on tensor cores (same contract).
template <class T, int DK>
__global__ void __launch_bounds__(kThreads) states_mma_kernel(Work wk, bool grads) {
  using Tl = MmaTiles<DK, kCols>;
  constexpr int C = Tl::C;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const x = reinterpret_cast<T*>(smem_raw);
  T* const y = x + 2 * Tl::kX;
  float* const a = reinterpret_cast<float*>(y + 2 * Tl::kY);  // [2][C]
  const Place pl(wk);
  const Rows& xs = grads ? wk.q : wk.k;
  const Rows& ys = grads ? wk.du : wk.v;
  const T* const xg = slice<T>(xs, pl);
  const T* const yg = slice<T>(ys, pl) + pl.col0();
  auto chunk = [&](int64_t i) { return grads ? pl.chunk1 - 1 - (i - pl.chunk0) : i; };
  auto load = [&](int64_t c, int buf) {
    load_chunk<T, DK>(x, buf, xg, xs, c, wk);
    load_chunk<T, kCols>(y, buf, yg, ys, c, wk);
    load_chunk_decays<C>(a, buf, wk, pl, c);
  };
  StateFrag<DK, kCols> st;
  frag_each(st.c, 0, 0, [](int, int, float& v) { v = 0.f; });
  float total = 0.f;
  if (pl.chunk0 < pl.chunk1) load(chunk(pl.chunk0), 0);
  cp_async_commit();
  for (int64_t ci = pl.chunk0; ci < pl.chunk1; ++ci) {
    const int buf = static_cast<int>(ci - pl.chunk0) & 1;
    __syncthreads();  // every warp is done with buffer buf ^ 1
    if (ci + 1 < pl.chunk1) load(chunk(ci + 1), buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const ChunkDecay<C> d{a + buf * C};
    st.template step<T, C>(x + buf * Tl::kX, y + buf * Tl::kY, d, grads ? Factor::ea : Factor::w);
    total += d.total();
  }
  st.store(wk.states + pl.state_offset(wk), wk, 0, pl.col0());
  if (pl.tile == 0 && threadIdx.x == 0) wk.split_decay[pl.bh * wk.nsplit + pl.split] = total;
}

// The chunk loop every tensor-core chunk kernel shares: walks its split's chunks forward or
// backward, with the next chunk's tiles loaded by load(c, buf) (and its log-decays into sm.a)
// into the other buffer while body(buf, t0, n, more, d) works on this one, d its decays; before
// each body the state fragment is staged in sm.s. `more`: another chunk follows in this walk.
// Two barriers per chunk.
enum class Walk { forward, backward };

template <int C, Walk W, class Frag, class Sm, class Load, class Body>
__device__ __forceinline__ void walk_split(const Work& wk, const Place& pl, Frag& st, const Sm& sm, Load&& load,
                                           Body&& body) {
  const int64_t count = pl.chunk1 - pl.chunk0;
  auto chunk = [&](int64_t i) { return W == Walk::forward ? pl.chunk0 + i : pl.chunk1 - 1 - i; };
  auto load_all = [&](int64_t c, int buf) {
    load(c, buf);
    load_chunk_decays<C>(sm.a, buf, wk, pl, c);
  };
  if (count > 0) load_all(chunk(0), 0);
  cp_async_commit();
  for (int64_t i = 0; i < count; ++i) {
    const int buf = static_cast<int>(i) & 1;
    const int64_t ci = chunk(i), t0 = ci * C;
    const int n = static_cast<int>(min(static_cast<int64_t>(C), wk.seqlen - t0));
    __syncthreads();  // every warp is done with buffer buf ^ 1 and s
    if (i + 1 < count) load_all(chunk(i + 1), buf ^ 1);
    cp_async_commit();
    st.to_tile(sm.s);
    cp_async_wait<1>();
    __syncthreads();
    body(buf, t0, n, i + 1 < count, ChunkDecay<C>{sm.a + buf * C});
  }
}

// output_kernel on tensor cores (same contract; o in T). Warp w computes rows m0 = warp_row0(w)
// and columns n0 = 32 (w / 4) of U; the two warps of a row block both compute its 16 x C
// scores (no shared round trip for P).
template <class T, int DK>
__global__ void __launch_bounds__(kThreads, 2) output_mma_kernel(Work wk) {
  using Tl = MmaTiles<DK, kCols>;
  constexpr int C = Tl::C;
  static_assert(C == 64 && kThreads == 256, "output_mma_kernel: 8 warps as 4 row blocks x 2 column halves");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const MmaSmem<T, DK, kCols> sm(smem_raw, true, false);
  const Place pl(wk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = warp_row0(warp), n0 = 32 * (warp / 4);
  const Band band = causal_band<C>(m0, Scores::queries_keys);
  const T* const qg = slice<T>(wk.q, pl);
  const T* const kg = slice<T>(wk.k, pl);
  const T* const vg = slice<T>(wk.v, pl) + pl.col0();
  auto load = [&](int64_t c, int buf) {
    load_chunk<T, DK>(sm.q, buf, qg, wk.q, c, wk);
    if (!wk.causal) return;
    load_chunk<T, DK>(sm.k, buf, kg, wk.k, c, wk);
    load_chunk<T, kCols>(sm.v, buf, vg, wk.v, c, wk);
  };
  // o's rows of (batch, head) at the tile's columns (dim_v is a multiple of kCols: no column
  // past it).
  const int64_t out_off = pl.b * wk.out_stride[0] + pl.h * wk.out_stride[2] + pl.col0();
  StateFrag<DK, kCols> st;
  st.load(start_state(wk, pl), wk, 0, pl.col0());
  walk_split<C, Walk::forward>(wk, pl, st, sm, load, [&](int buf, int64_t t0, int n, bool more,
                                                         const ChunkDecay<C>& d) {
    const T* const kb = sm.k + buf * Tl::kX;
    const T* const vb = sm.v + buf * Tl::kY;
    const uint32_t q_base = ldsm_base<DK, kLanesRowsFirst>(sm.q + buf * Tl::kX, lane);
    float u[1][4][4] = {};
    warp_tile_mma<T, DK / 16, DK, kCols, BLayout::kn>(u, q_base, 0, m0, ldsm_base<kCols, kLanesRowsFirst>(sm.s, lane),
                                                      0, n0);
    scale_frag_rows(u, d, Factor::ea, m0);
    if (wk.causal) {
      float p[1][C / 8][4] = {};  // Q K^T of rows m0.. against the chunk
      warp_tile_mma<T, DK / 16, DK, DK, BLayout::nk>(p, q_base, 0, m0, ldsm_base<DK, kLanesColsFirst>(kb, lane), 0, 0,
                                                     band.lo, band.hi);
      mask_scores<C>(p, d.a, m0, Scores::queries_keys, band, wk.log_decay);
      scores_mma<T, C, kCols>(u, p, ldsm_base<kCols, kLanesRowsFirst>(vb, lane), n0, band);
    }
    frag_store<T>(u, static_cast<T*>(wk.out) + out_off + t0 * wk.out_stride[1], wk.out_stride[1], m0, n0, n);
    if (wk.causal && more) st.template step<T, C>(kb, vb, d, Factor::w);
  });
}

// dq_kernel and dkdv_kernel's dk on tensor cores by key-row tiles (same contract, Dv = DV), one
// kernel for both: block (tile, split, bh) owns key dims r0 = ROWS tile.. of the gradient and
// walks its split with rows r0.. of the state (dq: forward from the split's entry state) or of
// the state gradient (dk: backward from its exit), over all DV columns, reading whole rows of
// the score operands:
//   dq[:, r0..] = e^A (dU S[r0.., :]^T) + mask(dU V^T) K[:, r0..],
//   S[r0.., :]  = e^{A_L} S[r0.., :] + (K[:, r0..] w)^T V;
//   dk[:, r0..] = w (V dS[r0.., :]^T) + mask(dU V^T)^T Q[:, r0..],
//   dS[r0.., :] = e^{A_L} dS[r0.., :] + (Q[:, r0..] e^A)^T dU.
// The roles, dq / dk: rows (the A operand of every product) dU / V, their scores' partner
// V / dU, the scores' product and state step operand K / Q, the row dot's tile Q / K (q.dq and
// -k.dk over the tile's key dims, added into wk.dot). Warp w computes rows m0 = warp_row0(w) and
// key dims r0 + n0, n0 = ROWS / 2 (w / 4); the two warps of a row block both compute the scores.
enum class RowGrad { dq, dk };

template <class T, int DV, int ROWS, RowGrad G>
__global__ void __launch_bounds__(kThreads, 2) row_grad_mma_kernel(Work wk) {
  using Tl = MmaTiles<ROWS, DV>;
  constexpr int C = Tl::C;
  constexpr bool kDq = G == RowGrad::dq;
  static_assert(C == 64 && (ROWS == 64 || ROWS == 128) && kThreads == 256,
                "row_grad_mma_kernel: 8 warps as 4 row blocks x 2 halves");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Slots: rows in du, their partner in v, the product operand in k, the dot tile in q.
  const MmaSmem<T, ROWS, DV> sm(smem_raw, true, true);
  const Place pl(wk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = warp_row0(warp), n0 = ROWS / 2 * (warp / 4), r0 = ROWS * pl.tile;
  const Band band = causal_band<C>(m0, kDq ? Scores::queries_keys : Scores::keys_queries);
  const Rows &rows = kDq ? wk.du : wk.v, &partner = kDq ? wk.v : wk.du;
  const Rows &operand = kDq ? wk.k : wk.q, &dotted = kDq ? wk.q : wk.k;
  const T* const rows_g = slice<T>(rows, pl);
  const T* const partner_g = slice<T>(partner, pl);
  const T* const operand_g = slice<T>(operand, pl) + r0;
  const T* const dotted_g = slice<T>(dotted, pl) + r0;
  auto load = [&](int64_t c, int buf) {
    load_chunk<T, DV>(sm.du, buf, rows_g, rows, c, wk);
    if (wk.dot) load_chunk<T, ROWS>(sm.q, buf, dotted_g, dotted, c, wk);
    if (!wk.causal) return;
    load_chunk<T, ROWS>(sm.k, buf, operand_g, operand, c, wk);
    load_chunk<T, DV>(sm.v, buf, partner_g, partner, c, wk);
  };
  const int heads_x = kDq ? wk.heads_q : wk.heads_k, hx = pl.h / (wk.heads / heads_x);
  StateFrag<ROWS, DV> st;
  st.load(start_state(wk, pl), wk, r0, 0);
  walk_split<C, kDq ? Walk::forward : Walk::backward>(wk, pl, st, sm, load, [&](int buf, int64_t t0, int n,
                                                                               bool more, const ChunkDecay<C>& d) {
    const T* const ob = sm.k + buf * Tl::kX;
    const T* const pb = sm.v + buf * Tl::kY;
    const uint32_t rows_base = ldsm_base<DV, kLanesRowsFirst>(sm.du + buf * Tl::kY, lane);
    float acc[1][ROWS / 16][4] = {};
    // (S's rows n0.. in the base: n0 rows are a multiple of the 128-byte swizzle period, so the
    // ldmatrix addresses are the same, with fewer registers)
    warp_tile_mma<T, DV / 16, DV, DV, BLayout::nk>(acc, rows_base, 0, m0,
                                                   ldsm_base<DV, kLanesColsFirst>(sm.s, lane) + n0 * DV * 2, 0, 0);
    if (kDq || wk.causal) scale_frag_rows(acc, d, kDq ? Factor::ea : Factor::w, m0);
    if (wk.causal) {
      float g[1][C / 8][4] = {};  // the rows' scores against the chunk (dU V^T, or transposed V dU^T)
      warp_tile_mma<T, DV / 16, DV, DV, BLayout::nk>(g, rows_base, 0, m0, ldsm_base<DV, kLanesColsFirst>(pb, lane), 0,
                                                     0, band.lo, band.hi);
      mask_scores<C>(g, d.a, m0, kDq ? Scores::queries_keys : Scores::keys_queries, band, wk.log_decay);
      scores_mma<T, C, ROWS>(acc, g, ldsm_base<ROWS, kLanesRowsFirst>(ob, lane), n0, band);
    }
    frag_write<T>(acc, m0, n0, n, kDq ? wk.dq_out : wk.dk_out, kDq ? wk.dq : wk.dk,
                  ((pl.b * wk.seqlen + t0) * heads_x + hx) * wk.dim_k + r0, static_cast<int64_t>(heads_x) * wk.dim_k);
    if (wk.dot)
      add_row_dots<ROWS>(acc, sm.q + buf * Tl::kX, m0, n0, n, wk.dot + pl.bh * wk.seqlen + t0, kDq ? 1.f : -1.f);
    if (wk.causal && more) st.template step<T, C>(ob, pb, d, kDq ? Factor::w : Factor::ea);
  });
}

// dkdv_kernel's dv on tensor cores by column tiles (as the forward), walking each split
// backward with the column tile of dS:
//   dv[:, c..] = w (K dS[:, c..]) + mask(Q K^T)^T dU[:, c..],
//   dS[:, c..] = e^{A_L} dS[:, c..] + (Q e^A)^T dU[:, c..]   (c = the tile's first column).
// Warp w computes rows (keys) m0 = warp_row0(w) and columns n0 = 32 (w / 4) of the tile from the
// transposed scores K Q^T of its rows; the two warps of a row block both compute them.
template <class T, int DK>
__global__ void __launch_bounds__(kThreads, 2) dv_mma_kernel(Work wk) {
  using Tl = MmaTiles<DK, kCols>;
  constexpr int C = Tl::C;
  static_assert(C == 64 && kThreads == 256, "dv_mma_kernel: 8 warps as 4 row blocks x 2 column halves");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const MmaSmem<T, DK, kCols> sm(smem_raw, false, true);
  const Place pl(wk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = warp_row0(warp), n0 = 32 * (warp / 4);
  const Band band = causal_band<C>(m0, Scores::keys_queries);
  const int hv = pl.h / (wk.heads / wk.heads_v);
  const T* const qg = slice<T>(wk.q, pl);
  const T* const kg = slice<T>(wk.k, pl);
  const T* const dug = slice<T>(wk.du, pl) + pl.col0();
  auto load = [&](int64_t c, int buf) {
    load_chunk<T, DK>(sm.k, buf, kg, wk.k, c, wk);
    if (!wk.causal) return;
    load_chunk<T, DK>(sm.q, buf, qg, wk.q, c, wk);
    load_chunk<T, kCols>(sm.du, buf, dug, wk.du, c, wk);
  };
  StateFrag<DK, kCols> st;
  st.load(start_state(wk, pl), wk, 0, pl.col0());
  walk_split<C, Walk::backward>(wk, pl, st, sm, load, [&](int buf, int64_t t0, int n, bool more,
                                                          const ChunkDecay<C>& d) {
    const T* const qb = sm.q + buf * Tl::kX;
    const T* const dub = sm.du + buf * Tl::kY;
    const uint32_t k_base = ldsm_base<DK, kLanesRowsFirst>(sm.k + buf * Tl::kX, lane);
    float dv[1][4][4] = {};
    warp_tile_mma<T, DK / 16, DK, kCols, BLayout::kn>(dv, k_base, 0, m0, ldsm_base<kCols, kLanesRowsFirst>(sm.s, lane),
                                                      0, n0);
    if (wk.causal) {
      scale_frag_rows(dv, d, Factor::w, m0);
      float pt[1][C / 8][4] = {};  // K Q^T: P^T of rows (keys) m0.. against the chunk
      // (an opaque base: formed once, not again in each of the band's branches)
      warp_tile_mma<T, DK / 16, DK, DK, BLayout::nk>(pt, k_base, 0, m0, opaque(ldsm_base<DK, kLanesColsFirst>(qb, lane)),
                                                     0, 0, band.lo, band.hi);
      mask_scores<C>(pt, d.a, m0, Scores::keys_queries, band, wk.log_decay);
      scores_mma<T, C, kCols>(dv, pt, ldsm_base<kCols, kLanesRowsFirst>(dub, lane), n0, band);
    }
    frag_write<T>(dv, m0, n0, n, wk.dv_out, wk.dv, ((pl.b * wk.seqlen + t0) * wk.heads_v + hv) * wk.dim_v + pl.col0(),
                  static_cast<int64_t>(wk.heads_v) * wk.dim_v);
    if (wk.causal && more) st.template step<T, C>(qb, dub, d, Factor::ea);
  });
}

// o = U[:Dv] / (U[Dv] + eps) per row of the fp32 U rows [B, S, H, cols] (one warp a row).
template <class T>
__global__ void norm_out_kernel(const float* u, Work wk, float eps) {
  const int64_t rows = wk.batch * wk.seqlen * wk.heads;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const float* ur = u + r * wk.cols;
    const float inv = 1.f / (ur[wk.dim_v] + eps);
    const int64_t b = r / (wk.seqlen * wk.heads), t = r / wk.heads % wk.seqlen, h = r % wk.heads;
    T* o = static_cast<T*>(wk.out) + b * wk.out_stride[0] + t * wk.out_stride[1] + h * wk.out_stride[2];
    for (int c = lane; c < wk.dim_v; c += 32) o[c] = from_float<T>(ur[c] * inv);
  }
}

// The normalised output's backward in place, U rows -> dU rows: with den = U[Dv] + eps,
// dU[:Dv] = dO / den and dU[Dv] = -(dO . U[:Dv]) / den^2.
template <class T>
__global__ void norm_grad_kernel(float* u, Rows dout, Work wk, float eps) {
  const int64_t rows = wk.batch * wk.seqlen * wk.heads;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    float* ur = u + r * wk.cols;
    const float inv = 1.f / (ur[wk.dim_v] + eps);
    const int64_t b = r / (wk.seqlen * wk.heads), t = r / wk.heads % wk.seqlen;
    const int h = static_cast<int>(r % wk.heads);
    float dot = 0.f;
    for (int c = lane; c < wk.dim_v; c += 32) {
      const float g = load_row<T>(dout, b, t, h, c);
      dot += g * ur[c];
      ur[c] = g * inv;
    }
    for (int o = 16; o >= 1; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    __syncwarp();
    if (lane == 0) ur[wk.dim_v] = -dot * inv * inv;
  }
}

template <class T>
__global__ void to_dtype_kernel(const float* src, T* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<T>(src[i]);
}

// d_log_decay from dot[bh][t] = q_t.dq_t - k_t.dk_t of each (batch, state head): per token
// da_t = <S_T, dS_T> + sum_{i >= t} dot_i into [B, S, H]; per head (one decay for all tokens)
// sum_t da_t = T <S_T, dS_T> + sum_t (t + 1) dot_t, summed over the batch into [H]. Each
// sequence is cut into segments of kDecaySeg tokens: decay_sums_kernel gives every (bh,
// segment) its {sum, (t + 1)-weighted sum} of dot, and the extra segment nseg the end term
// <S_T, dS_T> (weighted: T times it); then decay_token_kernel scans each segment in reverse
// from the sums of the segments after it, or decay_head_kernel adds the weighted sums in a
// fixed order.
constexpr int kDecaySeg = 2048;

__global__ void __launch_bounds__(kThreads) decay_sums_kernel(const float* dot, const float* final_state,
                                                              const float* d_final, int64_t size, int64_t seqlen,
                                                              int nseg, float2* sums) {
  __shared__ float scratch[32];
  const int64_t bh = blockIdx.x;
  const int seg = blockIdx.y;
  float x = 0.f, wx = 0.f;
  if (seg == nseg) {
    if (d_final)
      for (int64_t i = threadIdx.x; i < size; i += kThreads) x += final_state[bh * size + i] * d_final[bh * size + i];
  } else {
    const int64_t t1 = min(seqlen, (seg + 1) * static_cast<int64_t>(kDecaySeg));
    for (int64_t t = seg * static_cast<int64_t>(kDecaySeg) + threadIdx.x; t < t1; t += kThreads) {
      const float d = dot[bh * seqlen + t];
      x += d;
      wx += static_cast<float>(t + 1) * d;
    }
  }
  x = block_sum(x, scratch);
  wx = seg == nseg ? static_cast<float>(seqlen) * x : block_sum(wx, scratch);
  if (threadIdx.x == 0) sums[bh * (nseg + 1) + seg] = make_float2(x, wx);
}

__global__ void __launch_bounds__(kThreads) decay_token_kernel(const float* dot, const float2* sums, int64_t seqlen,
                                                               int nseg, int heads, float* out) {
  __shared__ float scratch[32];
  const int64_t bh = blockIdx.x, b = bh / heads;
  const int seg = blockIdx.y, h = static_cast<int>(bh % heads);
  float after = 0.f;
  for (int j = seg + 1 + static_cast<int>(threadIdx.x); j <= nseg; j += kThreads) after += sums[bh * (nseg + 1) + j].x;
  float run = block_sum(after, scratch);
  const int64_t t0 = seg * static_cast<int64_t>(kDecaySeg), t1 = min(seqlen, t0 + kDecaySeg);
  for (int64_t base = t0 + (t1 - 1 - t0) / kThreads * kThreads; base >= t0; base -= kThreads) {
    const int64_t t = base + threadIdx.x;
    float total;
    const float suffix = block_suffix_sum(t < t1 ? dot[bh * seqlen + t] : 0.f, scratch, total);
    if (t < t1) out[(b * seqlen + t) * heads + h] = run + suffix;
    run += total;
  }
}

__global__ void __launch_bounds__(kThreads) decay_head_kernel(const float2* sums, int batch, int heads, int nseg,
                                                              float* out) {
  __shared__ float scratch[32];
  const int h = blockIdx.x;
  float x = 0.f;
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(batch) * (nseg + 1); i += kThreads)
    x += sums[((i / (nseg + 1)) * heads + h) * (nseg + 1) + i % (nseg + 1)].y;
  x = block_sum(x, scratch);
  if (threadIdx.x == 0) out[h] = x;
}

// Stream-ordered fp32 scratch, released (after the queued kernels) when the call returns.
class Scratch {
 public:
  explicit Scratch(Stream s) : s_(s) { LCTX_CUDA_CHECK(cudaGetDevice(&dev_)); }
  ~Scratch() {
    for (void* p : ptrs_) deallocate_async(p, Device::cuda(dev_), s_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* floats(int64_t n, bool zeroed = false) {
    void* p = allocate_async(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float), Device::cuda(dev_), s_);
    ptrs_.push_back(p);
    if (zeroed) LCTX_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<size_t>(n) * sizeof(float), cuda_stream(s_)));
    return static_cast<float*>(p);
  }

 private:
  Stream s_;
  int dev_ = 0;
  std::vector<void*> ptrs_;
};

Device current_device() {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  return Device::cuda(dev);
}

Rows rows_of(const void* ptr, const int64_t (&stride)[3], int heads, int x_heads, bool f32) {
  Rows r;
  r.ptr = ptr;
  std::copy_n(stride, 3, r.stride);
  r.div = heads / x_heads;
  r.f32 = f32;
  return r;
}

// The shapes of a call and its split of the sequence: enough (column tile, split, batch x
// head) blocks for kSplitsPerSm per SM, whole chunks per split and at least kMinSplitChunks of
// them (each split's state pass has a fixed cost). Measured on an H200 (B 1, H 16, D 128):
// 8 per SM is 7-15% faster fwd+bwd than 4 at T = 32k-128k, and the floor keeps 8k at its
// 4-per-SM speed (8 per SM alone made it 8% slower); 16 and 32 per SM were slower again.
constexpr int64_t kSplitsPerSm = 8, kMinSplitChunks = 8;

template <int DK>
Work make_work(const LinearAttnParams& p) {
  Work w;
  w.batch = p.batch;
  w.seqlen = p.seqlen;
  w.heads = p.heads;
  w.heads_q = p.heads_q;
  w.heads_k = p.heads_k;
  w.heads_v = p.heads_v;
  w.dim_k = p.dim_k;
  w.dim_v = p.dim_v;
  w.cols = p.state_cols();
  w.causal = p.causal;
  w.normalize = p.normalize;
  w.nchunks = (p.seqlen + Tiles<DK>::C - 1) / Tiles<DK>::C;
  w.ntiles = (w.cols + kCols - 1) / kCols;
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  const int sms = sm_count(dev);
  const int64_t per_split = static_cast<int64_t>(w.ntiles) * p.batch * p.heads;
  const int64_t want =
      std::clamp<int64_t>((kSplitsPerSm * sms + per_split - 1) / per_split, 1, std::max<int64_t>(w.nchunks, 1));
  w.split_chunks = static_cast<int>(
      std::min<int64_t>(std::max<int64_t>((w.nchunks + want - 1) / want, kMinSplitChunks), std::max<int64_t>(w.nchunks, 1)));
  w.nsplit = static_cast<int>(std::max<int64_t>((w.nchunks + w.split_chunks - 1) / w.split_chunks, 1));
  const bool f32 = p.dtype == DType::f32;
  w.q = rows_of(p.q, p.q_stride, p.heads, p.heads_q, f32);
  w.k = rows_of(p.k, p.k_stride, p.heads, p.heads_k, f32);
  w.v = rows_of(p.v, p.v_stride, p.heads, p.heads_v, f32);
  w.log_decay = static_cast<const float*>(p.log_decay);
  w.per_token = p.decay_per_token;
  std::copy_n(p.decay_stride, 2, w.decay_stride);
  return w;
}

// Whether a 16-bit source can be read by 16-byte cp.async rows: aligned base, strides of 8.
bool vec_rows(const void* ptr, const int64_t (&stride)[3]) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride[0] % 8 == 0 && stride[1] % 8 == 0 && stride[2] % 8 == 0;
}

// The most dynamic shared memory a tensor-core kernel takes for Dk = DK, Dv = DV.
template <int DK, int DV>
constexpr int mma_smem_bytes() {
  return std::max({MmaTiles<DK, kCols>::kStatesBytes, MmaTiles<DK, kCols>::kOneYBytes,
                   MmaTiles<kRowTile<DK, DV>, DV>::kGradBytes});
}

// The tensor-core kernels take 16-bit inputs with Dk, Dv in {64, 128}, not normalised, rows
// that cp.async can copy (q, k, v and `io`: o in the forward, dout in the backward), on a
// device whose blocks may have the shared memory they need (not every sm_8x GPU: those take
// the fp32 kernels).
bool use_mma(const LinearAttnParams& p, const void* io, const int64_t (&io_stride)[3]) {
  auto dim_ok = [](int d) { return d == 64 || d == 128; };
  if (!(p.dtype == DType::bf16 || p.dtype == DType::f16) || p.normalize || !dim_ok(p.dim_k) || !dim_ok(p.dim_v) ||
      !vec_rows(p.q, p.q_stride) || !vec_rows(p.k, p.k_stride) || !vec_rows(p.v, p.v_stride) || !vec_rows(io, io_stride))
    return false;
  const int need = p.dim_k == 64 ? (p.dim_v == 64 ? mma_smem_bytes<64, 64>() : mma_smem_bytes<64, 128>())
                                  : (p.dim_v == 64 ? mma_smem_bytes<128, 64>() : mma_smem_bytes<128, 128>());
  int dev = 0, limit = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  LCTX_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return need <= limit;
}

template <class K>
void set_smem(K kernel, int bytes) {
  LCTX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// states_kernel (or its tensor-core form) over every (column tile, split, batch x head).
template <class T, int DK>
void launch_states(const Work& w, bool grads, cudaStream_t st) {
  const dim3 grid(w.ntiles, w.nsplit, static_cast<unsigned>(w.batch * w.heads));
  if constexpr (kHasMma<T, DK>) {
    if (w.mma) {
      constexpr int bytes = MmaTiles<DK, kCols>::kStatesBytes;
      set_smem(states_mma_kernel<T, DK>, bytes);
      states_mma_kernel<T, DK><<<grid, kThreads, bytes, st>>>(w, grads);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn states_mma_kernel");
      return;
    }
  }
  set_smem(states_kernel<T, DK>, Tiles<DK>::kSmemBytes);
  states_kernel<T, DK><<<grid, kThreads, Tiles<DK>::kSmemBytes, st>>>(w, grads);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn states_kernel");
}

// row_grad_mma_kernel for dq, then dk, over (key-row tile, split, batch x head) for Dk = DK
// (the tensor-core path's dim_k), Dv = DV.
template <class T, int DK, int DV>
void launch_row_grads(const Work& w, const Work& wr, cudaStream_t st, PhaseLog& log) {
  constexpr int rows = kRowTile<DK, DV>, bytes = MmaTiles<rows, DV>::kGradBytes;
  const dim3 grid(w.dim_k / rows, w.nsplit, static_cast<unsigned>(w.batch * w.heads));
  set_smem(row_grad_mma_kernel<T, DV, rows, RowGrad::dq>, bytes);
  row_grad_mma_kernel<T, DV, rows, RowGrad::dq><<<grid, kThreads, bytes, st>>>(w);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn row_grad_mma_kernel (dq)");
  log.mark("dq");
  set_smem(row_grad_mma_kernel<T, DV, rows, RowGrad::dk>, bytes);
  row_grad_mma_kernel<T, DV, rows, RowGrad::dk><<<grid, kThreads, bytes, st>>>(wr);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn row_grad_mma_kernel (dk)");
  log.mark("dk");
}

// dq_kernel (with the forward's states in w) and dkdv_kernel (with the state gradients in
// wr) over every (column tile, split, batch x head); or on tensor cores row_grad_mma_kernel
// (dq, dk) by key-row tiles and dv_mma_kernel by column tiles.
template <class T, int DK>
void launch_grads(const Work& w, const Work& wr, cudaStream_t st, PhaseLog& log) {
  const dim3 grid(w.ntiles, w.nsplit, static_cast<unsigned>(w.batch * w.heads));
  if constexpr (kHasMma<T, DK>) {
    if (w.mma) {
      if (w.dim_v == 64) launch_row_grads<T, DK, 64>(w, wr, st, log);
      else launch_row_grads<T, DK, 128>(w, wr, st, log);
      constexpr int bytes = MmaTiles<DK, kCols>::kOneYBytes;
      set_smem(dv_mma_kernel<T, DK>, bytes);
      dv_mma_kernel<T, DK><<<grid, kThreads, bytes, st>>>(wr);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn dv_mma_kernel");
      log.mark("dv");
      return;
    }
  }
  set_smem(dq_kernel<T, DK>, Tiles<DK>::kSmemBytes);
  dq_kernel<T, DK><<<grid, kThreads, Tiles<DK>::kSmemBytes, st>>>(w);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn dq_kernel");
  log.mark("dq");
  set_smem(dkdv_kernel<T, DK>, Tiles<DK>::kSmemBytes);
  dkdv_kernel<T, DK><<<grid, kThreads, Tiles<DK>::kSmemBytes, st>>>(wr);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn dkdv_kernel");
  log.mark("dkdv");
}

// The forward's states: each split's entry state into w.states (and the split log-decays),
// the final state into `final_state`.
template <class T, int DK>
void split_states(Work& w, Scratch& sc, const float* state0, float* final_state, cudaStream_t st) {
  const int64_t size = static_cast<int64_t>(w.dim_k) * w.cols, nbh = w.batch * w.heads;
  if constexpr (kHasMma<T, DK>) {
    if (w.mma && w.log_decay) {  // every chunk's cumulative log-decays, for all the chunk kernels of the call
      constexpr int C = MmaTiles<64, 64>::C;
      float* cum = sc.floats(nbh * w.nchunks * C);
      chunk_decays_kernel<C><<<grid_size(nbh * w.nchunks * 32, kThreads), kThreads, 0, st>>>(w, cum);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn chunk_decays_kernel");
      w.cum_decay = cum;
    }
  }
  w.states = sc.floats(nbh * w.nsplit * size);
  w.split_decay = sc.floats(nbh * w.nsplit);
  launch_states<T, DK>(w, false, st);
  scan_kernel<<<grid_size(nbh * size, 256, 4096), 256, 0, st>>>(w.states, w.split_decay, state0, final_state, nbh,
                                                                w.nsplit, size, false);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn scan_kernel");
}

// U (normalised: the fp32 rows [B, S, H, cols]) or o from the split entry states in w.
template <class T, int DK>
void outputs(Work w, void* out, const int64_t (&stride)[3], bool f32, cudaStream_t st) {
  w.out = out;
  std::copy_n(stride, 3, w.out_stride);
  w.out_f32 = f32;
  const dim3 grid(w.ntiles, w.nsplit, static_cast<unsigned>(w.batch * w.heads));
  if constexpr (kHasMma<T, DK>) {
    if (w.mma && !f32) {
      constexpr int bytes = MmaTiles<DK, kCols>::kOneYBytes;
      set_smem(output_mma_kernel<T, DK>, bytes);
      output_mma_kernel<T, DK><<<grid, kThreads, bytes, st>>>(w);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn output_mma_kernel");
      return;
    }
  }
  set_smem(output_kernel<T, DK>, Tiles<DK>::kSmemBytes);
  output_kernel<T, DK><<<grid, kThreads, Tiles<DK>::kSmemBytes, st>>>(w);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn output_kernel");
}

int row_blocks(const Work& w) { return grid_size(w.batch * w.seqlen * w.heads * 32, 256, 8192); }

template <class T, int DK>
void forward(const LinearAttnParams& p, Stream s) {
  Work w = make_work<DK>(p);
  w.mma = use_mma(p, p.o, p.o_stride);
  Scratch sc(s);
  const cudaStream_t st = cuda_stream(s);
  PhaseLog log("linear_attn forward", current_device(), s);
  float* final_state = static_cast<float*>(p.final_state);
  split_states<T, DK>(w, sc, static_cast<const float*>(p.state0), final_state, st);
  w.whole = final_state;
  log.mark("states");
  if (!p.normalize) {
    outputs<T, DK>(w, p.o, p.o_stride, false, st);
    log.mark("output");
    return;
  }
  float* u = sc.floats(p.batch * p.seqlen * p.heads * w.cols);
  const int64_t ust[3] = {p.seqlen * p.heads * w.cols, p.heads * static_cast<int64_t>(w.cols), w.cols};
  outputs<T, DK>(w, u, ust, true, st);
  w.out = p.o;
  std::copy_n(p.o_stride, 3, w.out_stride);
  norm_out_kernel<T><<<row_blocks(w), 256, 0, st>>>(u, w, static_cast<float>(p.eps));
  LCTX_CUDA_CHECK_LAUNCH("linear_attn norm_out_kernel");
  log.mark("output");
}

template <class T, int DK>
void backward(const LinearAttnParams& p, Stream s) {
  Work w = make_work<DK>(p);
  // The gradient of a per-head constant (learned) decay sums every token's terms, which cancel
  // to a small remainder: from the 16-bit products its error measured ~12x the bf16 baseline
  // (per-token decays: 1.4x), so those calls take the fp32 kernels.
  w.mma = use_mma(p, p.dout, p.dout_stride) && !(p.d_log_decay && !p.decay_per_token);
  Scratch sc(s);
  const cudaStream_t st = cuda_stream(s);
  const int64_t size = p.state_size(), nbh = p.batch * p.heads, n_rows = p.batch * p.seqlen;
  const bool f32 = p.dtype == DType::f32;
  PhaseLog log("linear_attn backward", current_device(), s);
  float* final_state = sc.floats(nbh * size);
  split_states<T, DK>(w, sc, static_cast<const float*>(p.state0), final_state, st);
  w.whole = final_state;
  log.mark("states");
  if (p.normalize) {  // dU from the recomputed U and dout
    float* u = sc.floats(n_rows * p.heads * w.cols);
    const int64_t ust[3] = {p.seqlen * p.heads * w.cols, p.heads * static_cast<int64_t>(w.cols), w.cols};
    outputs<T, DK>(w, u, ust, true, st);
    norm_grad_kernel<T><<<row_blocks(w), 256, 0, st>>>(u, rows_of(p.dout, p.dout_stride, 1, 1, f32), w,
                                                       static_cast<float>(p.eps));
    LCTX_CUDA_CHECK_LAUNCH("linear_attn norm_grad_kernel");
    w.du = rows_of(u, ust, 1, 1, true);
  } else {
    w.du = rows_of(p.dout, p.dout_stride, 1, 1, f32);
  }
  // fp32 gradient sums (the outputs themselves for f32 inputs) and q.dq - k.dk per token. On
  // tensor cores a gradient whose input head has one state head is written directly instead
  // (Work::dq_out etc.).
  const int64_t nq = n_rows * p.heads_q * p.dim_k, nk = n_rows * p.heads_k * p.dim_k, nv = n_rows * p.heads_v * p.dim_v;
  auto grad_sum = [&](void* out, int64_t n, int x_heads, void*& direct) -> float* {
    if (w.mma && x_heads == p.heads && reinterpret_cast<uintptr_t>(out) % 4 == 0) {  // 2-element stores
      direct = out;
      return nullptr;
    }
    if (!f32) return sc.floats(n, true);
    LCTX_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(n) * sizeof(float), st));
    return static_cast<float*>(out);
  };
  w.dq = grad_sum(p.dq, nq, p.heads_q, w.dq_out);
  w.dk = grad_sum(p.dk, nk, p.heads_k, w.dk_out);
  w.dv = grad_sum(p.dv, nv, p.heads_v, w.dv_out);
  w.dot = p.d_log_decay ? sc.floats(nbh * p.seqlen, true) : nullptr;
  // The state gradient at each split's exit (reverse scan seeded with d_final_state) and d_state0.
  Work wr = w;
  wr.states = sc.floats(nbh * w.nsplit * size);
  float* d_state0 = static_cast<float*>(p.d_state0);
  launch_states<T, DK>(wr, true, st);
  scan_kernel<<<grid_size(nbh * size, 256, 4096), 256, 0, st>>>(
      wr.states, w.split_decay, static_cast<const float*>(p.d_final_state), d_state0, nbh, w.nsplit, size, true);
  LCTX_CUDA_CHECK_LAUNCH("linear_attn scan_kernel");
  wr.whole = d_state0;
  log.mark("grad_states");
  launch_grads<T, DK>(w, wr, st, log);
  if (!f32) {
    for (auto [src, dst, n] : {std::tuple{w.dq, p.dq, nq}, std::tuple{w.dk, p.dk, nk}, std::tuple{w.dv, p.dv, nv}}) {
      if (!src) continue;  // written directly
      to_dtype_kernel<T><<<grid_size(n, 256, 8192), 256, 0, st>>>(src, static_cast<T*>(dst), n);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn to_dtype_kernel");
    }
    log.mark("to_dtype");
  }
  if (p.d_log_decay) {
    const int nseg = static_cast<int>((p.seqlen + kDecaySeg - 1) / kDecaySeg);
    auto* sums = reinterpret_cast<float2*>(sc.floats(2 * nbh * (nseg + 1)));
    float* out = static_cast<float*>(p.d_log_decay);
    decay_sums_kernel<<<dim3(static_cast<unsigned>(nbh), nseg + 1), kThreads, 0, st>>>(
        w.dot, final_state, static_cast<const float*>(p.d_final_state), size, p.seqlen, nseg, sums);
    LCTX_CUDA_CHECK_LAUNCH("linear_attn decay_sums_kernel");
    if (p.decay_per_token) {
      if (nseg > 0) decay_token_kernel<<<dim3(static_cast<unsigned>(nbh), nseg), kThreads, 0, st>>>(
          w.dot, sums, p.seqlen, nseg, p.heads, out);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn decay_token_kernel");
    } else {
      decay_head_kernel<<<p.heads, kThreads, 0, st>>>(sums, static_cast<int>(p.batch), p.heads, nseg, out);
      LCTX_CUDA_CHECK_LAUNCH("linear_attn decay_head_kernel");
    }
    log.mark("decay");
  }
}

// f(T{}, DK) for the call's dtype and the smallest key tile holding Dk.
template <class F>
void dispatch(const LinearAttnParams& p, F&& f) {
  auto by_dim = [&](auto t) {
    if (p.dim_k <= 64) f(t, std::integral_constant<int, 64>{});
    else if (p.dim_k <= 128) f(t, std::integral_constant<int, 128>{});
    else f(t, std::integral_constant<int, 256>{});
  };
  switch (p.dtype) {
    case DType::bf16: by_dim(__nv_bfloat16{}); break;
    case DType::f16: by_dim(__half{}); break;
    case DType::f32: by_dim(float{}); break;
    default: LCTX_FAIL("linear_attn: no CUDA kernel for dtype ", dtype_name(p.dtype));
  }
}

}  // namespace

void linear_attn_forward_cuda(const LinearAttnParams& p, Stream s) {
  if (p.batch == 0 || p.heads == 0) return;
  dispatch(p, [&](auto t, auto dk) { forward<decltype(t), decltype(dk)::value>(p, s); });
}

void linear_attn_backward_cuda(const LinearAttnParams& p, Stream s) {
  if (p.batch == 0 || p.heads == 0) return;
  dispatch(p, [&](auto t, auto dk) { backward<decltype(t), decltype(dk)::value>(p, s); });
}

}  // namespace lctx::linear_attn
