// Selective scan CUDA kernels (selective_scan.h): bf16/f16/f32 I/O, the scan in fp32.
// Layout of the work: a block takes 32 channels of one sequence (a lane per channel, so the
// [B, S, D] rows load coalesced) and all d_state states, split over its 8 warps in slices of
// two states (with more than 8 slices a warp walks SPT of them). The sequence is walked in
// chunks of kChunk tokens: the block forms dt (bias, softplus) and dt * x of the chunk in
// shared memory once per (token, channel) and stages the chunk's B and C rows there (fp32),
// each thread's share of the next chunk loading meanwhile; then each warp runs its states
// through the chunk from the carried state (exp on the SFU in the log2 domain), and the
// per-warp partial sums of y meet in shared memory for the skip term, the gate and the store.
// The exp count is one per (token, channel, state): with d_state 16 the SFU, not HBM, bounds
// the forward. The kernels use their own chunk length (ScanOptions::chunk shapes the CPU
// implementation only; the recurrence is the same).
// Segments: a block walks one segment of the sequence (blockIdx.z; enough segments for ~16
// blocks per SM), so long sequences fill the GPU with few channels. With several segments a
// summary pass runs each segment from zeros (its final state and sum dt), segment_scan_kernel
// combines them into the state entering each segment (dist/state_scan.h's affine scan: a =
// exp(A sum dt)), and the pass proper starts there; the backward mirrors it for the state
// gradient (a reverse summary from zero gradients, the reverse segment scan ending in
// d_state0). The decays are then computed twice per pass, for parallelism over the sequence.
// Backward: a checkpoint pass (the forward kernel writing each chunk's entry state, f32, the
// only thing kept) and a reverse pass that walks the chunks from the last: it recomputes the
// chunk's states from its entry state (kept in registers with their decays), forms y before the
// gate (dz, and the gradient gy of y before the gate), then runs
//   dh_t = C_t gy_t + a_{t+1} dh_{t+1}   (dh after the last token: d_final_state)
// per state (selective_scan_reference.cpp has the same equations). dB and dC sum over the
// channels of a group: each warp transposes its 32 channels' terms through shared memory,
// sums them per group and adds them to an fp32 {dB, dC} buffer with one vector atomic per
// (token, group, state) and block; dA, dD and d_dt_bias go through per-(batch, segment) fp32 partials
// summed in (batch, segment) order by a second small kernel; a third converts dB and dC to
// the I/O dtype.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/allocator.h"
#include "core/cuda/affine_scan.cuh"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/launch.cuh"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "ssm/selective_scan_params.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

constexpr int kChunk = 16;  // tokens per chunk: shared-memory stage and checkpoint interval
constexpr int kLanes = 32;  // channels per block, one per lane
constexpr int kPair = 2;    // states per slice
constexpr int kWarps = 8;   // warps per block: slice j of warp w holds states 2 (w + 8 j) + {0, 1}
constexpr int kThreads = kLanes * kWarps;
constexpr int kCL = kChunk * kLanes;      // (token, channel) cells of a chunk
constexpr int kItems = kCL / kThreads;    // cells per thread: tokens w + 8 m of channel `lane`

// What every kernel reads besides ScanParams: the chunk count and the scratch buffers.
struct ScanArgs {
  ScanParams p;
  int64_t chunks = 0;       // ceil(S / kChunk)
  int64_t seg_chunks = 0;   // chunks per segment (blockIdx.z): the last may be shorter
  int64_t nseg = 1;         // segments: ceil(chunks / seg_chunks)
  bool pair_loads = false;  // B and C rows may be read two states at a time (aligned, N even)
  // With nseg > 1: [B, nseg, D, N] each segment's summary from zeros (its final state; in the
  // backward its entry gradient), replaced in place by segment_scan_kernel with the state
  // entering (gradient leaving) each segment; seg_dt [B, nseg, D] the sum of dt over each.
  float* seg_h = nullptr;
  float* seg_g = nullptr;
  float* seg_dt = nullptr;
  float* ckpt = nullptr;    // [B, chunks, D, N]: the state entering each chunk
  float2* dBC = nullptr;    // [B, S, G, N] fp32 sums {dB, dC}
  float* dA = nullptr;     // [B, nseg, D, N] per-(batch, segment) partials
  float* dD = nullptr;     // [B, nseg, D]
  float* dbias = nullptr;  // [B, nseg, D]
};

// The chunks [k0, k1) of a block's segment.
struct SegChunks {
  int64_t k0, k1;
  __device__ explicit SegChunks(const ScanArgs& a)
      : k0(blockIdx.z * a.seg_chunks), k1(min(a.chunks, (blockIdx.z + 1) * a.seg_chunks)) {}
};

// The scalar maps of ssm_math.h with the exponential on the SFU (fp32 kernels).
__device__ __forceinline__ float sigmoid_f(float v) { return 1.0f / (1.0f + __expf(-v)); }
__device__ __forceinline__ float softplus_f(float v) {
  return v > float(detail::kSoftplusLinear) ? v : log1pf(__expf(v));
}
__device__ __forceinline__ float silu_f(float v) { return v * sigmoid_f(v); }
__device__ __forceinline__ float silu_grad_f(float v) {
  const float s = sigmoid_f(v);
  return s * (1.0f + v * (1.0f - s));
}

template <class T>
__device__ __forceinline__ float in(const void* base, int64_t i) {
  return to_f32(static_cast<const T*>(base)[i]);
}

// States n, n + 1 of a B or C row (zeros past N).
template <class T>
__device__ __forceinline__ float2 load_pair(const T* row, int n, int N, bool pair_loads) {
  if (pair_loads && n + 1 < N) {
    if constexpr (std::is_same_v<T, float>) {
      return *reinterpret_cast<const float2*>(row + n);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + n));
    } else {
      return __half22float2(*reinterpret_cast<const __half2*>(row + n));
    }
  }
  return make_float2(n < N ? to_f32(row[n]) : 0.0f, n + 1 < N ? to_f32(row[n + 1]) : 0.0f);
}

// A thread's place: batch b, channel d (lane), warp w.
struct Place {
  int64_t b;
  int lane, w, d0, d, g;
  bool on;  // d < D
  __device__ explicit Place(const ScanParams& p) {
    b = blockIdx.y;
    lane = threadIdx.x & 31;
    w = threadIdx.x >> 5;
    d0 = blockIdx.x * kLanes;
    d = d0 + lane;
    on = d < p.dim;
    g = min(d, p.dim - 1) / (p.dim / p.groups);  // lanes past D: the last channel's group
  }
  __device__ int state(int j) const { return kPair * (w + j * kWarps); }  // first state of slice j
  __device__ int cell(int m) const { return (w + kWarps * m) * kLanes + lane; }  // cell of item m
  __device__ int64_t tok(const ScanParams& p, int64_t t) const { return (b * p.seqlen + t) * p.dim + d; }
  __device__ int64_t bc(const ScanParams& p, int64_t t) const {
    return ((b * p.seqlen + t) * p.groups + g) * p.dstate;
  }
  __device__ int64_t state_at(const ScanParams& p) const { return (b * p.dim + d) * p.dstate; }
  // Row d of this block's (batch, segment) in a [B, nseg, D, N] buffer, and in a [B, nseg, D] one.
  __device__ int64_t seg_state_at(const ScanParams& p, int64_t nseg) const {
    return ((b * nseg + blockIdx.z) * p.dim + d) * p.dstate;
  }
  __device__ int64_t seg_at(const ScanParams& p, int64_t nseg) const { return (b * nseg + blockIdx.z) * p.dim + d; }
};

// A thread's cells of one chunk as read from memory (zeros past S or D): loaded a chunk ahead
// of their use so the loads overlap the scan of the chunk before.
struct Cells {
  float x[kItems], dt[kItems], z[kItems], dy[kItems];
};

template <class T>
__device__ void load_cells(const ScanParams& p, const Place& pl, int64_t t0, bool grad, Cells& c) {
#pragma unroll
  for (int m = 0; m < kItems; ++m) {
    const int64_t t = t0 + pl.w + kWarps * m;
    const bool live = pl.on && t >= 0 && t < p.seqlen;
    const int64_t o = live ? pl.tok(p, t) : 0;
    c.x[m] = live ? in<T>(p.x, o) : 0.0f;
    c.dt[m] = live ? in<T>(p.dt, o) : 0.0f;
    c.z[m] = live && p.z ? in<T>(p.z, o) : 0.0f;
    c.dy[m] = live && grad ? in<T>(p.dy, o) : 0.0f;
  }
}

// The chunk's dt (after bias and softplus; 0 past S, where the state then stays) with dt * x,
// and x, in shared memory, [kChunk][32] each, formed once per cell; sig = d dt / d dt_raw.
struct ChunkSmem {
  float2* dtu;  // {dt, dt * x}
  float* x;     // backward only
  // B and C of the chunk for the (at most 2) groups of the block's channels, fp32, as
  // float4 {B[n], B[n+1], C[n], C[n+1]} per pair of states: [kChunk][2 groups][ceil(N/2)];
  // null when the channels span more groups (tiny groups: rows are read from global memory).
  float4* bc;
};

// The B/C stage: its floats, and whether a block's channels fit it.
__host__ __device__ constexpr int bc_stage_floats(int dstate) { return kChunk * 2 * 4 * ((dstate + 1) / 2); }
__device__ __forceinline__ int first_group(const ScanParams& p, int d0) { return d0 / (p.dim / p.groups); }
__device__ __forceinline__ bool bc_staged(const ScanParams& p, int d0) {
  const int last = min(d0 + kLanes, p.dim) - 1;
  return last / (p.dim / p.groups) - first_group(p, d0) < 2;
}

// Element e of the stage: its offset in B or C relative to token t0's row, or -1 past N or G;
// tt and which (0: B, 1: C) packed as tt * 2 + which.
struct BCElem {
  int rel = -1, meta = 0;
};
__device__ __forceinline__ BCElem bc_elem(const ScanParams& p, const Place& pl, int e) {
  const int pairs = (p.dstate + 1) / 2, pair = e >> 2, r = pair / pairs;
  const int n = 2 * (pair - r * pairs) + (e & 1), which = (e >> 1) & 1, gg = r & 1, tt = r >> 1;
  const int g = first_group(p, pl.d0) + gg;
  BCElem x;
  x.meta = tt * 2 + which;
  if (n < p.dstate && g < p.groups) x.rel = (tt * p.groups + g) * p.dstate + n;
  return x;
}
template <class T>
__device__ __forceinline__ float bc_load(const ScanParams& p, const Place& pl, int64_t t0, BCElem x) {
  if (x.rel < 0 || t0 + (x.meta >> 1) >= p.seqlen) return 0.0f;
  return in<T>(x.meta & 1 ? p.C : p.B, (pl.b * p.seqlen + t0) * p.groups * p.dstate + x.rel);
}

// The stage elements a thread fills per chunk, read a chunk ahead (elements beyond these,
// d_state > 16, are loaded as the stage fills).
constexpr int kBCAhead = 4;
struct BCAhead {
  BCElem at[kBCAhead];
  float v[kBCAhead];
  __device__ BCAhead(const ScanParams& p, const Place& pl) {
#pragma unroll
    for (int r = 0; r < kBCAhead; ++r) {
      const int e = threadIdx.x + r * kThreads;
      at[r] = e < bc_stage_floats(p.dstate) ? bc_elem(p, pl, e) : BCElem{};
      v[r] = 0.0f;
    }
  }
  template <class T>
  __device__ void load(const ScanParams& p, const Place& pl, int64_t t0) {
#pragma unroll
    for (int r = 0; r < kBCAhead; ++r) v[r] = bc_load<T>(p, pl, t0, at[r]);
  }
};

template <class T>
__device__ __forceinline__ void fill_bc(const ScanParams& p, const Place& pl, int64_t t0, const BCAhead& a,
                                        float4* stage) {
  if (!stage) return;
  float* st = reinterpret_cast<float*>(stage);
  const int total = bc_stage_floats(p.dstate);
#pragma unroll
  for (int r = 0; r < kBCAhead; ++r) {
    const int e = threadIdx.x + r * kThreads;
    if (e < total) st[e] = a.v[r];
  }
  for (int e = threadIdx.x + kBCAhead * kThreads; e < total; e += kThreads)
    st[e] = bc_load<T>(p, pl, t0, bc_elem(p, pl, e));
}

// Forms the chunk's dt, dt * x (and x) from the thread's cells; sig only when asked.
template <bool kSig>
__device__ void form_chunk(const ScanParams& p, const Place& pl, int64_t t0, const Cells& c, float bias,
                           const ChunkSmem& s, float (&sig)[kItems]) {
#pragma unroll
  for (int m = 0; m < kItems; ++m) {
    const int i = pl.cell(m);
    const bool live = pl.on && t0 + pl.w + kWarps * m < p.seqlen;
    const float raw = c.dt[m] + bias;
    const float dtv = !live ? 0.0f : p.softplus ? softplus_f(raw) : raw;
    if constexpr (kSig) sig[m] = p.softplus ? sigmoid_f(raw) : 1.0f;
    s.dtu[i] = make_float2(dtv, dtv * c.x[m]);
    if (s.x) s.x[i] = c.x[m];
  }
}

// Starts reading chunk t0's cells (with dy when `grad`) and B/C stage elements.
template <class T>
__device__ __forceinline__ void read_ahead(const ScanParams& p, const Place& pl, int64_t t0, bool grad, Cells& next,
                                           BCAhead& bc_next) {
  load_cells<T>(p, pl, t0, grad, next);
  bc_next.load<T>(p, pl, t0);
}

// Forms chunk t0 in shared memory from `next` (its cells, read a chunk ahead) and, when `more`,
// starts reading chunk t_next into next (with dy when `grad`), so the loads overlap the scan
// of t0; returns t0's cells.
template <class T, bool kSig>
__device__ __forceinline__ Cells stage_chunk(const ScanParams& p, const Place& pl, int64_t t0, float bias,
                                             const ChunkSmem& s, Cells& next, BCAhead& bc_next, bool more,
                                             int64_t t_next, bool grad, float (&sig)[kItems]) {
  const Cells cur = next;
  form_chunk<kSig>(p, pl, t0, cur, bias, s, sig);
  fill_bc<T>(p, pl, t0, bc_next, s.bc);
  if (more) read_ahead<T>(p, pl, t_next, grad, next, bc_next);
  return cur;
}

// B and C of states n, n + 1 at token t0 + tt (zeros past S or N).
template <class T>
__device__ __forceinline__ void bc_pairs(const ScanArgs& a, const Place& pl, const ChunkSmem& s, int64_t t0, int tt,
                                         int n, float2& bv, float2& cv) {
  const ScanParams& p = a.p;
  if (s.bc) {
    const int pairs = (p.dstate + 1) / 2;
    const float4 v = n < p.dstate ? s.bc[(tt * 2 + pl.g - first_group(p, pl.d0)) * pairs + n / 2]
                                  : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    bv = make_float2(v.x, v.y);
    cv = make_float2(v.z, v.w);
    return;
  }
  bv = cv = make_float2(0.0f, 0.0f);
  if (t0 + tt < p.seqlen) {
    const int64_t o = pl.bc(p, t0 + tt);
    bv = load_pair(static_cast<const T*>(p.B) + o, n, p.dstate, a.pair_loads);
    cv = load_pair(static_cast<const T*>(p.C) + o, n, p.dstate, a.pair_loads);
  }
}

// Runs the two states of one slice (first state n, their A) through chunk [t0, t0 + kChunk)
// from h, calling f(tt, a[2], h[2], C) after each token (a: the decays exp(dt A), taken as
// 2^(dt log2e A) on the SFU).
template <class T, class F>
__device__ __forceinline__ void run_slice(const ScanArgs& a, const Place& pl, int64_t t0, const ChunkSmem& s, int n,
                                          const float (&A)[2], float (&h)[2], F&& f) {
#pragma unroll
  for (int tt = 0; tt < kChunk; ++tt) {
    const float2 du = s.dtu[tt * kLanes + pl.lane];
    const float dl = du.x * kLog2e, u = du.y;
    float2 bv, cv;
    bc_pairs<T>(a, pl, s, t0, tt, n, bv, cv);
    const float dec[2] = {fast_exp2(dl * A[0]), fast_exp2(dl * A[1])};
    h[0] = dec[0] * h[0] + u * bv.x;
    h[1] = dec[1] * h[1] + u * bv.y;
    f(tt, dec, h, cv);
  }
}

// A of the slice's states (zeros past N or D).
__device__ __forceinline__ void slice_A(const ScanParams& p, const Place& pl, int n, float (&A)[2]) {
#pragma unroll
  for (int q = 0; q < kPair; ++q)
    A[q] = pl.on && n + q < p.dstate ? static_cast<const float*>(p.A)[static_cast<int64_t>(pl.d) * p.dstate + n + q]
                                     : 0.0f;
}

// The slice's two states of an fp32 state row (zeros when src is null or past N or D), and the
// store of them.
__device__ __forceinline__ void slice_state(const ScanParams& p, const Place& pl, const float* src, int n,
                                            float (&h)[2]) {
#pragma unroll
  for (int q = 0; q < kPair; ++q) h[q] = src && pl.on && n + q < p.dstate ? src[n + q] : 0.0f;
}
__device__ __forceinline__ void store_state(const ScanParams& p, const Place& pl, float* dst, int n,
                                            const float (&h)[2]) {
  if (!pl.on) return;
#pragma unroll
  for (int q = 0; q < kPair; ++q)
    if (n + q < p.dstate) dst[n + q] = h[q];
}

// Slices per warp beyond 2 are walked in a loop (their states in local memory): d_state > 32
// is not the bandwidth case.
template <int SPT>
constexpr int kUnrollSlices = SPT <= 2 ? SPT : 1;

// What a forward pass over a segment produces:
//   output   y (and final_state when the sequence is one segment), from the entering state;
//   ckpt     the backward's checkpoints: the state entering every chunk (no y);
//   summary  the segment run from zeros: its final state into seg_h and sum dt into seg_dt.
enum class Pass { output, ckpt, summary };

template <class T, int SPT, Pass kPass>
__global__ void __launch_bounds__(kThreads, 4) scan_forward_kernel(const ScanArgs a) {
  const ScanParams& p = a.p;
  constexpr bool kY = kPass == Pass::output;
  __shared__ float2 s_dtu[kCL];
  __shared__ float s_y[kWarps][kCL];
  extern __shared__ float4 s_bc[];  // bc_stage_floats(N) floats
  const Place pl(p);
  const SegChunks seg(a);
  const ChunkSmem s{s_dtu, nullptr, bc_staged(p, pl.d0) ? s_bc : nullptr};
  const float bias = pl.on && p.dt_bias ? static_cast<const float*>(p.dt_bias)[pl.d] : 0.0f;
  const float skip = pl.on && p.D ? static_cast<const float*>(p.D)[pl.d] : 0.0f;
  float A[SPT][2], h[SPT][2];
  // The state entering the segment: state0 for a single segment, else segment_scan_kernel's.
  const float* entry = kPass == Pass::summary ? nullptr
                       : a.seg_h                ? a.seg_h + pl.seg_state_at(p, a.nseg)
                       : p.state0               ? static_cast<const float*>(p.state0) + pl.state_at(p)
                                                : nullptr;
#pragma unroll
  for (int j = 0; j < SPT; ++j) {
    slice_A(p, pl, pl.state(j), A[j]);
    slice_state(p, pl, entry, pl.state(j), h[j]);
  }
  float dt_sum = 0.0f;  // summary: warp 0's sum of dt over the segment for channel `lane`
  Cells next;
  BCAhead bc_next(p, pl);
  read_ahead<T>(p, pl, seg.k0 * kChunk, false, next, bc_next);
  for (int64_t k = seg.k0; k < seg.k1; ++k) {
    const int64_t t0 = k * kChunk;
    if constexpr (kPass == Pass::ckpt) {
      float* row = a.ckpt + ((pl.b * a.chunks + k) * p.dim + pl.d) * p.dstate;
#pragma unroll kUnrollSlices<SPT>
      for (int j = 0; j < SPT; ++j) store_state(p, pl, row, pl.state(j), h[j]);
    }
    float sig[kItems];
    const Cells cur =
        stage_chunk<T, false>(p, pl, t0, bias, s, next, bc_next, k + 1 < seg.k1, t0 + kChunk, false, sig);
    __syncthreads();
    if constexpr (kPass == Pass::summary) {
      if (pl.w == 0) {
#pragma unroll
        for (int tt = 0; tt < kChunk; ++tt) dt_sum += s.dtu[tt * kLanes + pl.lane].x;
      }
    }
    float y[kChunk] = {};
#pragma unroll kUnrollSlices<SPT>
    for (int j = 0; j < SPT; ++j)
      run_slice<T>(a, pl, t0, s, pl.state(j), A[j], h[j], [&](int tt, const float(&)[2], const float(&hh)[2], float2 cv) {
        if constexpr (kY) y[tt] += cv.x * hh[0] + cv.y * hh[1];
      });
    if constexpr (kY) {
#pragma unroll
      for (int tt = 0; tt < kChunk; ++tt) s_y[pl.w][tt * kLanes + pl.lane] = y[tt];
    }
    __syncthreads();
    if constexpr (kY) {
#pragma unroll
      for (int m = 0; m < kItems; ++m) {
        const int64_t t = t0 + pl.w + kWarps * m;
        if (!pl.on || t >= p.seqlen) continue;
        const int i = pl.cell(m);
        float v = skip * cur.x[m];
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v += s_y[w][i];
        if (p.z) v *= silu_f(cur.z[m]);
        static_cast<T*>(p.y)[pl.tok(p, t)] = from_f32<T>(v);
      }
    }
  }
  float* out = nullptr;
  if constexpr (kPass == Pass::summary) {
    out = a.seg_h + pl.seg_state_at(p, a.nseg);
    if (pl.w == 0 && pl.on) a.seg_dt[pl.seg_at(p, a.nseg)] = dt_sum;
  } else if constexpr (kY) {
    if (a.nseg == 1) out = static_cast<float*>(p.final_state) + pl.state_at(p);
  }
  if (out) {
#pragma unroll kUnrollSlices<SPT>
    for (int j = 0; j < SPT; ++j) store_state(p, pl, out, pl.state(j), h[j]);
  }
}

// The affine scan over segments for each (b, d, n), in place in seg (dist/state_scan.h's
// combine): forward, seg[k] holds a segment's final state from zeros and leaves holding the
// state entering it, x_{k+1} = exp(A sum dt_k) x_k + seg[k] from x_0 = init; reverse, seg[k]
// holds the gradient a segment sends to its entry from its own tokens and leaves holding the
// gradient at its exit, walked from the last segment with the same decays. out: x after the
// last (final_state, d_state0).
__global__ void segment_scan_kernel(float* __restrict__ seg, const float* __restrict__ seg_dt,
                                    const float* __restrict__ A, const float* __restrict__ init, float* __restrict__ out,
                                    int64_t batch, int64_t nseg, int dim, int dstate, bool reverse) {
  const int64_t per = static_cast<int64_t>(dim) * dstate;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < batch * per;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / per, dn = e % per, d = dn / dstate;
    const float a = A[dn];
    const float x = affine_scan_in_place(
        init ? init[e] : 0.0f, nseg, reverse, [&](int64_t k) -> float& { return seg[(b * nseg + k) * per + dn]; },
        [&](int64_t k) { return expf(a * seg_dt[(b * nseg + k) * dim + d]); });
    if (out) out[e] = x;
  }
}

// Shared memory of the backward kernel, in floats: {dt, u}, x, gy; two [kWarps][kCL] partial
// buffers; per warp the [32][33] float2 transposition buffer of dB and dC (then the B/C stage).
constexpr int kBackwardSmemFloats = 4 * kCL + 2 * kWarps * kCL + kWarps * 2 * kLanes * (kLanes + 1);
static_assert(kBackwardSmemFloats % 4 == 0, "the B/C stage after it needs 16-byte alignment");

// Adds a warp's dB and dC terms of one slice (red[row][column] = {dB, dC}, rows tt * 2 + q,
// columns the 32 channels; lanes past D hold zeros) to the fp32 sums: lane r sums row r over
// the channels of each group (one group per block unless groups are narrower than 32
// channels), one atomic per group and sum.
__device__ void flush_bc(const ScanArgs& a, const Place& pl, int64_t t0, int n, const float2* red) {
  const ScanParams& p = a.p;
  const int r = pl.lane, tt = r / kPair, q = r % kPair;
  const int64_t t = t0 + tt;
  if (t >= p.seqlen || n + q >= p.dstate) return;
  const float2* row = red + r * (kLanes + 1);
  const int per_group = p.dim / p.groups;
  int g = pl.d0 / per_group;
  auto add = [&](float2 v) {
    const int64_t o = ((pl.b * p.seqlen + t) * p.groups + g) * p.dstate + n + q;
#if __CUDA_ARCH__ >= 900
    atomicAdd(a.dBC + o, v);  // one vector atomic for both
#else
    atomicAdd(&a.dBC[o].x, v.x);  // the generic PTX (sm_80) has no float2 atomics
    atomicAdd(&a.dBC[o].y, v.y);
#endif
  };
  float2 v = make_float2(0.0f, 0.0f);
  if ((min(pl.d0 + kLanes, p.dim) - 1) / per_group == g) {
#pragma unroll
    for (int c = 0; c < kLanes; ++c) v.x += row[c].x, v.y += row[c].y;
    add(v);
    return;
  }
  for (int c = 0, next = (g + 1) * per_group - pl.d0; c < kLanes && pl.d0 + c < p.dim; ++c) {
    if (c == next) {
      add(v);
      v = make_float2(0.0f, 0.0f);
      ++g;
      next += per_group;
    }
    v.x += row[c].x, v.y += row[c].y;
  }
  add(v);
}

template <class T, int SPT>
__global__ void __launch_bounds__(kThreads, 2) scan_backward_kernel(const ScanArgs a) {
  const ScanParams& p = a.p;
  extern __shared__ float smem[];
  const Place pl(p);
  float4* s_bc = reinterpret_cast<float4*>(smem + kBackwardSmemFloats);  // bc_stage_floats(N) floats
  const ChunkSmem s{reinterpret_cast<float2*>(smem), smem + 2 * kCL, bc_staged(p, pl.d0) ? s_bc : nullptr};
  float* s_gy = smem + 3 * kCL;
  float* s_p1 = smem + 4 * kCL;      // [kWarps][kCL]: y partials, then dx partials
  float* s_p2 = s_p1 + kWarps * kCL;  // [kWarps][kCL]: d(dt) partials
  float2* red = reinterpret_cast<float2*>(s_p2 + kWarps * kCL) + pl.w * kLanes * (kLanes + 1);  // [32][33]
  const float bias = pl.on && p.dt_bias ? static_cast<const float*>(p.dt_bias)[pl.d] : 0.0f;
  const float skip = pl.on && p.D ? static_cast<const float*>(p.D)[pl.d] : 0.0f;
  float A[SPT][2], dh[SPT][2], dA[SPT][2];
  const SegChunks seg(a);
  // The gradient leaving the segment: d_final_state for a single segment, else segment_scan_kernel's.
  const float* dfin = a.seg_g           ? a.seg_g + pl.seg_state_at(p, a.nseg)
                      : p.d_final_state ? static_cast<const float*>(p.d_final_state) + pl.state_at(p)
                                        : nullptr;
#pragma unroll
  for (int j = 0; j < SPT; ++j) {
    slice_A(p, pl, pl.state(j), A[j]);
    slice_state(p, pl, dfin, pl.state(j), dh[j]);
    dA[j][0] = dA[j][1] = 0.0f;
  }
  float dD = 0.0f, dbias = 0.0f;  // this thread's share of channel `lane`
  // The states of one slice over the chunk and their decays (kept from the y pass when SPT == 1).
  float hs[kChunk][2], as[kChunk][2], h0[2];
  Cells next;
  BCAhead bc_next(p, pl);
  read_ahead<T>(p, pl, (seg.k1 - 1) * kChunk, true, next, bc_next);
  for (int64_t k = seg.k1 - 1; k >= seg.k0; --k) {
    const int64_t t0 = k * kChunk;
    const float* entry = a.ckpt + ((pl.b * a.chunks + k) * p.dim + pl.d) * p.dstate;
    float sig[kItems];
    const Cells cur =
        stage_chunk<T, true>(p, pl, t0, bias, s, next, bc_next, k > seg.k0, t0 - kChunk, true, sig);
    __syncthreads();
    // y before the gate, recomputed.
    float y[kChunk] = {};
#pragma unroll kUnrollSlices<SPT>
    for (int j = 0; j < SPT; ++j) {
      float h[2];
      slice_state(p, pl, entry, pl.state(j), h);
      if constexpr (SPT == 1) h0[0] = h[0], h0[1] = h[1];
      run_slice<T>(a, pl, t0, s, pl.state(j), A[j], h,
                   [&](int tt, const float(&dec)[2], const float(&hh)[2], float2 cv) {
                     y[tt] += cv.x * hh[0] + cv.y * hh[1];
                     if constexpr (SPT == 1) hs[tt][0] = hh[0], hs[tt][1] = hh[1], as[tt][0] = dec[0], as[tt][1] = dec[1];
                   });
    }
#pragma unroll
    for (int tt = 0; tt < kChunk; ++tt) s_p1[pl.w * kCL + tt * kLanes + pl.lane] = y[tt];
    __syncthreads();
    // The gate: dz and gy, the gradient of y before it; dD.
    float gy[kItems];
#pragma unroll
    for (int m = 0; m < kItems; ++m) {
      const int64_t t = t0 + pl.w + kWarps * m;
      const int i = pl.cell(m);
      gy[m] = 0.0f;
      if (pl.on && t < p.seqlen) {
        float yv = skip * cur.x[m];
#pragma unroll
        for (int w = 0; w < kWarps; ++w) yv += s_p1[w * kCL + i];
        gy[m] = cur.dy[m];
        if (p.z) {
          static_cast<T*>(p.dz)[pl.tok(p, t)] = from_f32<T>(gy[m] * yv * silu_grad_f(cur.z[m]));
          gy[m] *= silu_f(cur.z[m]);
        }
        dD += gy[m] * cur.x[m];
      }
      s_gy[i] = gy[m];
    }
    __syncthreads();
    // The reverse scan of each slice.
    float dx[kChunk] = {}, ddt[kChunk] = {};
#pragma unroll kUnrollSlices<SPT>
    for (int j = 0; j < SPT; ++j) {
      const int n = pl.state(j);
      if constexpr (SPT > 1) {
        float h[2];
        slice_state(p, pl, entry, n, h);
        h0[0] = h[0], h0[1] = h[1];
        run_slice<T>(a, pl, t0, s, n, A[j], h, [&](int tt, const float(&dec)[2], const float(&hh)[2], float2) {
          hs[tt][0] = hh[0], hs[tt][1] = hh[1], as[tt][0] = dec[0], as[tt][1] = dec[1];
        });
      }
#pragma unroll
      for (int tt = kChunk - 1; tt >= 0; --tt) {
        const int i = tt * kLanes + pl.lane;
        float2 bv, cv;
        bc_pairs<T>(a, pl, s, t0, tt, n, bv, cv);
        const float2 du = s.dtu[i];
        const float g_y = s_gy[i], dtv = du.x, xv = s.x[i], u = du.y;
        const float bq[2] = {bv.x, bv.y}, cq[2] = {cv.x, cv.y};
#pragma unroll
        for (int q = 0; q < kPair; ++q) {
          const float hprev = tt > 0 ? hs[tt - 1][q] : h0[q];
          float& g = dh[j][q];
          g += cq[q] * g_y;
          red[(tt * kPair + q) * (kLanes + 1) + pl.lane] = make_float2(g * u, g_y * hs[tt][q]);  // dB, dC
          dx[tt] += g * dtv * bq[q];
          const float ah = as[tt][q] * hprev;
          ddt[tt] += g * (bq[q] * xv + A[j][q] * ah);
          dA[j][q] += g * dtv * ah;
          g *= as[tt][q];
        }
      }
      __syncwarp();
      flush_bc(a, pl, t0, n, red);
      __syncwarp();
    }
#pragma unroll
    for (int tt = 0; tt < kChunk; ++tt) {
      s_p1[pl.w * kCL + tt * kLanes + pl.lane] = dx[tt];
      s_p2[pl.w * kCL + tt * kLanes + pl.lane] = ddt[tt];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < kItems; ++m) {
      const int64_t t = t0 + pl.w + kWarps * m;
      if (!pl.on || t >= p.seqlen) continue;
      const int i = pl.cell(m);
      float dxv = skip * gy[m], draw = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) dxv += s_p1[w * kCL + i], draw += s_p2[w * kCL + i];
      draw *= sig[m];
      const int64_t o = pl.tok(p, t);
      static_cast<T*>(p.dx)[o] = from_f32<T>(dxv);
      static_cast<T*>(p.d_dt)[o] = from_f32<T>(draw);
      dbias += draw;
    }
  }
  // d_state0 comes from segment_scan_kernel when there are several segments.
  float* ds0 = a.nseg == 1 ? static_cast<float*>(p.d_state0) + pl.state_at(p) : nullptr;
  float* dA_row = a.dA + pl.seg_state_at(p, a.nseg);
#pragma unroll kUnrollSlices<SPT>
  for (int j = 0; j < SPT; ++j) {
    if (ds0) store_state(p, pl, ds0, pl.state(j), dh[j]);
    store_state(p, pl, dA_row, pl.state(j), dA[j]);
  }
  // dD and d_dt_bias of the block's channels: the warps' shares summed in warp order.
  __syncthreads();
  s_p1[pl.w * kLanes + pl.lane] = dD;
  s_p2[pl.w * kLanes + pl.lane] = dbias;
  __syncthreads();
  if (pl.w == 0 && pl.on) {
    float sd = 0.0f, sb = 0.0f;
    for (int w = 0; w < kWarps; ++w) sd += s_p1[w * kLanes + pl.lane], sb += s_p2[w * kLanes + pl.lane];
    a.dD[pl.seg_at(p, a.nseg)] = sd;
    a.dbias[pl.seg_at(p, a.nseg)] = sb;
  }
}

// The backward's segment summaries (several segments only): each segment's chunks walked in
// reverse from a zero gradient, dh_{t-1} = a_t (dh_t + C_t gy_t), gy = dy * silu(z) (the
// gradient of y before the gate), a_t = exp(dt_t A) formed in the loop (the states themselves
// are not needed); the gradient reaching the segment's entry into seg_g.
template <class T, int SPT>
__global__ void __launch_bounds__(kThreads, 3) scan_grad_summary_kernel(const ScanArgs a) {
  const ScanParams& p = a.p;
  __shared__ float2 s_dtu[kCL];
  __shared__ float s_gy[kCL];
  extern __shared__ float4 s_bc[];  // bc_stage_floats(N) floats
  const Place pl(p);
  const SegChunks seg(a);
  const ChunkSmem s{s_dtu, nullptr, bc_staged(p, pl.d0) ? s_bc : nullptr};
  const float bias = pl.on && p.dt_bias ? static_cast<const float*>(p.dt_bias)[pl.d] : 0.0f;
  float A[SPT][2], dh[SPT][2];
#pragma unroll
  for (int j = 0; j < SPT; ++j) {
    slice_A(p, pl, pl.state(j), A[j]);
    dh[j][0] = dh[j][1] = 0.0f;
  }
  Cells next;
  BCAhead bc_next(p, pl);
  read_ahead<T>(p, pl, (seg.k1 - 1) * kChunk, true, next, bc_next);
  for (int64_t k = seg.k1 - 1; k >= seg.k0; --k) {
    const int64_t t0 = k * kChunk;
    float sig[kItems];
    const Cells cur =
        stage_chunk<T, false>(p, pl, t0, bias, s, next, bc_next, k > seg.k0, t0 - kChunk, true, sig);
#pragma unroll
    for (int m = 0; m < kItems; ++m) s_gy[pl.cell(m)] = p.z ? cur.dy[m] * silu_f(cur.z[m]) : cur.dy[m];
    __syncthreads();
#pragma unroll kUnrollSlices<SPT>
    for (int j = 0; j < SPT; ++j) {
      const int n = pl.state(j);
#pragma unroll
      for (int tt = kChunk - 1; tt >= 0; --tt) {
        float2 bv, cv;
        bc_pairs<T>(a, pl, s, t0, tt, n, bv, cv);
        const int i = tt * kLanes + pl.lane;
        const float g_y = s_gy[i], dl = s.dtu[i].x * kLog2e;
        dh[j][0] = (dh[j][0] + cv.x * g_y) * fast_exp2(dl * A[j][0]);
        dh[j][1] = (dh[j][1] + cv.y * g_y) * fast_exp2(dl * A[j][1]);
      }
    }
    __syncthreads();
  }
  float* out = a.seg_g + pl.seg_state_at(p, a.nseg);
#pragma unroll kUnrollSlices<SPT>
  for (int j = 0; j < SPT; ++j) store_state(p, pl, out, pl.state(j), dh[j]);
}

// out[i] = sum over k < count of part[k * n + i], in order (the (batch, segment) partials).
__global__ void sum_partials_kernel(float* out, const float* part, int64_t n, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int64_t k = 0; k < count; ++k) v += part[k * n + i];
    out[i] = v;
  }
}

// dB, dC in the I/O dtype from the fp32 sums.
template <class T>
__global__ void split_bc_kernel(T* dB, T* dC, const float2* sums, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float2 v = sums[i];
    dB[i] = from_f32<T>(v.x);
    dC[i] = from_f32<T>(v.y);
  }
}

// Slices per warp: ceil(N / 2) slices over kWarps warps, rounded up to a power of two.
int slices_per_warp(int dstate) {
  int spt = 1;
  while (spt * kWarps * kPair < dstate) spt *= 2;
  return spt;
}

// Calls f.template operator()<T, SPT>() for the call's dtype and slices per warp.
template <class F>
void dispatch(const ScanParams& p, int spt, F&& f) {
  auto with_spt = [&]<class T>() {
    switch (spt) {
      case 1: return f.template operator()<T, 1>();
      case 2: return f.template operator()<T, 2>();
      case 4: return f.template operator()<T, 4>();
      case 8: return f.template operator()<T, 8>();
      default: return f.template operator()<T, 16>();
    }
  };
  LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "selective_scan", [&] { return with_spt.template operator()<scalar_t>(); });
}

int current_device() {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

// Segments: enough (batch, channel block, segment) blocks for ~32 per SM, each segment at
// least kMinSegChunks chunks (its summary pass and the segment scan cost a segment's setup).
// 32 per SM measured 5% faster fwd+bwd than 16 or 8 at T = 32k-128k on an H200 (d_inner 4096).
constexpr int kBlocksPerSm = 32, kMinSegChunks = 4;

ScanArgs make_args(const ScanParams& p) {
  ScanArgs a;
  a.p = p;
  a.chunks = (p.seqlen + kChunk - 1) / kChunk;
  const size_t pair = 2 * dtype_size(p.dtype);
  a.pair_loads = p.dstate % 2 == 0 && reinterpret_cast<uintptr_t>(p.B) % pair == 0 &&
                 reinterpret_cast<uintptr_t>(p.C) % pair == 0;
  const int sms = sm_count(current_device());
  const int64_t blocks = std::max<int64_t>(p.batch * ((p.dim + kLanes - 1) / kLanes), 1);
  const int64_t want = std::max<int64_t>((int64_t(kBlocksPerSm) * sms + blocks - 1) / blocks, 1);
  a.seg_chunks = std::max<int64_t>((a.chunks + want - 1) / want, kMinSegChunks);
  a.nseg = std::max<int64_t>((a.chunks + a.seg_chunks - 1) / a.seg_chunks, 1);
  return a;
}

dim3 grid_of(const ScanArgs& a) {
  return dim3((a.p.dim + kLanes - 1) / kLanes, static_cast<unsigned>(a.p.batch), static_cast<unsigned>(a.nseg));
}

template <class K>
void launch(K kernel, const ScanArgs& a, int smem, cudaStream_t st, const char* what) {
  LCTX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  // The most shared memory per SM: two backward blocks (~113 KB each) fit only so.
  LCTX_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  kernel<<<grid_of(a), kThreads, smem, st>>>(a);
  LCTX_CUDA_CHECK_LAUNCH(what);
}

// seg_h (forward) or seg_g (reverse) through segment_scan_kernel.
void scan_segments(const ScanArgs& a, float* seg, const void* init, void* out, bool reverse, cudaStream_t st) {
  const ScanParams& p = a.p;
  const int64_t n = p.batch * p.dim * p.dstate;
  segment_scan_kernel<<<grid_size(n, kThreads), kThreads, 0, st>>>(
      seg, a.seg_dt, static_cast<const float*>(p.A), static_cast<const float*>(init), static_cast<float*>(out),
      p.batch, a.nseg, p.dim, p.dstate, reverse);
  LCTX_CUDA_CHECK_LAUNCH("selective_scan segment_scan_kernel");
}

// With several segments: their summaries and the forward segment scan, leaving the state
// entering each segment in a.seg_h (and the final state in final_state when given).
template <class T, int SPT>
void enter_segments(const ScanArgs& a, void* final_state, cudaStream_t st) {
  if (a.nseg == 1) return;
  launch(scan_forward_kernel<T, SPT, Pass::summary>, a, bc_stage_floats(a.p.dstate) * sizeof(float), st,
         "selective_scan summary");
  scan_segments(a, a.seg_h, a.p.state0, final_state, false, st);
}

}  // namespace

void selective_scan_forward_cuda(const ScanParams& p, Stream s) {
  if (p.batch == 0 || p.dim == 0) return;
  const Device dev = Device::cuda(current_device());
  ScanArgs a = make_args(p);
  const int64_t nseg_states = a.nseg > 1 ? p.batch * a.nseg * p.dim * (p.dstate + 1) : 0;
  float* scratch = nseg_states ? static_cast<float*>(allocate_async(nseg_states * sizeof(float), dev, s)) : nullptr;
  if (scratch) {
    a.seg_h = scratch;
    a.seg_dt = scratch + p.batch * a.nseg * p.dim * p.dstate;
  }
  const cudaStream_t st = cuda_stream(s);
  dispatch(p, slices_per_warp(p.dstate), [&]<class T, int SPT>() {
    enter_segments<T, SPT>(a, p.final_state, st);
    launch(scan_forward_kernel<T, SPT, Pass::output>, a, bc_stage_floats(p.dstate) * sizeof(float), st,
           "selective_scan_forward");
  });
  if (scratch) deallocate_async(scratch, dev, s);
}

void selective_scan_backward_cuda(const ScanParams& p, Stream s) {
  const Device dev = Device::cuda(current_device());
  const cudaStream_t st = cuda_stream(s);
  ScanArgs a = make_args(p);
  const int64_t bc = p.batch * p.seqlen * p.groups * p.dstate, states = p.batch * p.dim * p.dstate;
  const int64_t ckpt = p.batch * a.chunks * p.dim * p.dstate, nseg = a.nseg;
  const int64_t seg_bufs = nseg > 1 ? 2 * nseg * states + nseg * p.batch * p.dim : 0;
  const int64_t floats = ckpt + 1 + 2 * bc + nseg * (states + 2 * p.batch * p.dim) + seg_bufs;
  float* scratch = static_cast<float*>(allocate_async(std::max<int64_t>(floats, 1) * sizeof(float), dev, s));
  a.ckpt = scratch;
  a.dBC = reinterpret_cast<float2*>(a.ckpt + ckpt + ckpt % 2);  // 8-byte aligned
  a.dA = reinterpret_cast<float*>(a.dBC + bc);
  a.dD = a.dA + nseg * states;
  a.dbias = a.dD + nseg * p.batch * p.dim;
  if (nseg > 1) {
    a.seg_h = a.dbias + nseg * p.batch * p.dim;
    a.seg_g = a.seg_h + nseg * states;
    a.seg_dt = a.seg_g + nseg * states;
  }
  if (bc > 0) LCTX_CUDA_CHECK(cudaMemsetAsync(a.dBC, 0, bc * sizeof(float2), st));
  if (p.batch > 0 && p.dim > 0) {
    dispatch(p, slices_per_warp(p.dstate), [&]<class T, int SPT>() {
      const int bc_smem = bc_stage_floats(p.dstate) * sizeof(float);
      enter_segments<T, SPT>(a, nullptr, st);
      launch(scan_forward_kernel<T, SPT, Pass::ckpt>, a, bc_smem, st, "selective_scan_backward (checkpoints)");
      if (nseg > 1) {
        launch(scan_grad_summary_kernel<T, SPT>, a, bc_smem, st, "selective_scan_backward (summary)");
        scan_segments(a, a.seg_g, p.d_final_state, p.d_state0, true, st);
      }
      launch(scan_backward_kernel<T, SPT>, a, kBackwardSmemFloats * sizeof(float) + bc_smem, st,
             "selective_scan_backward");
    });
  }
  auto sum = [&](void* out, const float* part, int64_t n) {
    if (!out || n == 0) return;
    sum_partials_kernel<<<grid_size(n, kThreads), kThreads, 0, st>>>(static_cast<float*>(out), part, n, p.batch * nseg);
    LCTX_CUDA_CHECK_LAUNCH("selective_scan_backward (batch sums)");
  };
  sum(p.dA, a.dA, static_cast<int64_t>(p.dim) * p.dstate);
  sum(p.dD, a.dD, p.dim);
  sum(p.d_dt_bias, a.dbias, p.dim);
  if (bc > 0) {
    LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "selective_scan_backward", [&] {
      split_bc_kernel<scalar_t><<<grid_size(bc, kThreads), kThreads, 0, st>>>(
          static_cast<scalar_t*>(p.dB), static_cast<scalar_t*>(p.dC), a.dBC, bc);
      LCTX_CUDA_CHECK_LAUNCH("selective_scan_backward (dB, dC)");
    });
  }
  deallocate_async(scratch, dev, s);
}

}  // namespace lctx::ssm
