// Selective scan CUDA kernels (selective_scan.h): bf16/f16/f32 I/O, the scan in fp32.
// Layout of the work: Q lanes hold one channel's states, SPT each (Q * SPT >= N; the rest are
// zeros), so a warp holds 32 / Q channels and a block of kWarps warps CB of them (Q = 4,
// SPT = 4, CB = 32 at d_state 16). Each lane walks its segment of the sequence with its states
// in registers: one exp per (token, channel, state), the states' recurrences independent
// chains, and no shared-memory traffic per state. The block stages a run of tokens in shared memory, each (token,
// channel) cell formed once ({dt, dt * x, x, silu(z)} with dt after bias and softplus; z, dy and
// d dt / d dt_raw in the backward) with the B, C rows of the block's groups in fp32; the next
// run's cells are read into registers while the current one is scanned. Sums over a
// channel's states (y; dx and d dt in the backward) meet in a per-warp buffer every few tokens.
// Segments (blockIdx.z) give the GPU enough warps (make_args): a summary pass runs each
// segment from zeros (its final state and sum dt), segment_scan_kernel combines them into
// the state entering each segment (dist/state_scan.h's affine scan: a = exp(A sum dt)); the
// backward mirrors it for the state gradient.
// Backward: a checkpoint pass (the forward kernel writing the state entering every kChunk
// tokens, f32, the only thing kept) and a reverse pass over the chunks: each lane walks its
// states of the chunk from the checkpoint for y before the gate where there is one (dz and gy,
// the gradient of y before it), then runs
//   dh_t = C_t gy_t + a_{t+1} dh_{t+1}   (dh after the last token: d_final_state)
// backwards (selective_scan_reference.cpp has the same equations) over parts of kPart tokens:
// the first walk keeps the state entering each part and the last part's decays and states, the
// other parts are walked again from their entering states, so registers hold one part's
// decays and states, not the chunk's (2 kChunk SPT: 4 blocks per SM at d_state 16 instead of
// 2). dB and dC sum over the channels of a group: each token's terms are summed over the
// warp's channels of a group by shuffles (a transpose-reduce), the warps' sums meet in shared
// memory and are added per group to an fp32 {dB, dC} buffer with one vector atomic per
// (token, group, state) and block; dA, dD and d_dt_bias go through per-(batch, segment) fp32
// partials summed in (batch, segment) order by a second small kernel; a third converts dB and
// dC to the I/O dtype.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/allocator.h"
#include "core/cuda/affine_scan.cuh"
#include "core/cuda/fast_math.cuh"
#include "core/cuda/launch.cuh"
#include "core/cuda_check.h"
#include "core/cuda_types.cuh"
#include "core/phase_log.h"
#include "ssm/selective_scan_params.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

constexpr int kChunk = 16;        // tokens per checkpoint (and per backward stage)
constexpr int kPart = 4;          // tokens whose states the reverse pass keeps at a time
constexpr int kParts = kChunk / kPart;
constexpr int kFwdRun = 32;       // tokens per forward stage
constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kYGroup = 8;        // tokens per forward y reduction
constexpr int kRow = 32 + 4;      // floats per token row of a warp's sum buffer (conflict-free float4 reads)
constexpr int kBCAhead = 16;      // B/C stage floats a thread reads a stage ahead
constexpr int kStageBudget = 96 << 10;  // bytes the double-buffered B/C stage may take (else rows from global)
constexpr int kWarpsPerSm = 16;        // the warps per SM segments aim for (make_args)
constexpr int kBlocksPerSm = kWarpsPerSm / kWarps;

// What every kernel reads besides ScanParams: the chunk count and the scratch buffers.
struct ScanArgs {
  ScanParams p;
  int64_t chunks = 0;      // ceil(S / kChunk)
  int64_t seg_chunks = 0;  // chunks per segment (blockIdx.z): the last may be shorter
  int64_t nseg = 1;        // segments: ceil(chunks / seg_chunks)
  int span = 1;            // the most groups one block's channels touch
  bool staged = true;      // B/C rows staged in shared memory (else read from global memory)
  // With nseg > 1: [B, nseg, D, N] each segment's summary from zeros (its final state; in the
  // backward its entry gradient), replaced in place by segment_scan_kernel with the state
  // entering (gradient leaving) each segment; seg_dt [B, nseg, D] the sum of dt over each.
  float* seg_h = nullptr;
  float* seg_g = nullptr;
  float* seg_dt = nullptr;
  float* ckpt = nullptr;    // [B, chunks, D, N]: the state entering each chunk
  float2* dBC = nullptr;    // [B, S, G, N] fp32 sums {dB, dC}
  float* dA = nullptr;      // [B, nseg, D, N] per-(batch, segment) partials
  float* dD = nullptr;      // [B, nseg, D]
  float* dbias = nullptr;   // [B, nseg, D]
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

// A kernel's shape: Q lanes per channel with SPT states each, stages of L tokens.
template <int Q_, int SPT_, int L_>
struct Shape {
  static constexpr int Q = Q_, SPT = SPT_, L = L_;
  static constexpr int kCW = 32 / Q;                                    // channels per warp
  static constexpr int kCB = kWarps * kCW;                              // channels per block
  static constexpr int kN4 = Q * SPT;                                   // states held per channel
  static constexpr int kCells = (L * kCB + kThreads - 1) / kThreads;    // cells a thread forms per stage
  static constexpr int kBC = std::min(kBCAhead, L * 2 * kN4 / kThreads);  // B/C floats read ahead
  static_assert(SPT % 4 == 0 && L % kYGroup == 0 && kThreads % kCB == 0);
  // Floats of one stage: cells {dt, dt x, x, z} [L][CB], with kGrad {dy, d dt / d raw}
  // [L][CB], then B/C [span][L][2][N4] when staged.
  static constexpr int cell_floats(bool grad) { return (grad ? 6 : 4) * L * kCB; }
  static constexpr int bc_floats(int span) { return L * span * 2 * kN4; }
  __host__ __device__ static int stage_floats(bool grad, int span, bool staged) { return cell_floats(grad) + (staged ? bc_floats(span) : 0); }
};

// A thread's place: batch b, the block's token range [t_begin, t_end) (its segment), lane q of
// channel c of the block (d = d0 + c), that channel's group g0 + gi.
struct Place {
  int64_t b, t_begin, t_end;
  int lane, w, q, cw, c, d, d0, g0, gi, per_group;
  bool on;  // d < D
  template <class Sh>
  __device__ Place(const ScanArgs& a, Sh) {
    const ScanParams& p = a.p;
    b = blockIdx.y;
    t_begin = blockIdx.z * a.seg_chunks * kChunk;
    t_end = min(p.seqlen, t_begin + a.seg_chunks * kChunk);
    lane = threadIdx.x & 31;
    w = threadIdx.x >> 5;
    q = lane % Sh::Q;
    cw = lane / Sh::Q;
    c = w * Sh::kCW + cw;
    d0 = blockIdx.x * Sh::kCB;
    d = d0 + c;
    on = d < p.dim;
    per_group = p.dim / p.groups;
    g0 = d0 / per_group;
    gi = min(d, p.dim - 1) / per_group - g0;
  }
  __device__ int64_t tok(const ScanParams& p, int64_t t) const { return (b * p.seqlen + t) * p.dim + d; }
  __device__ int64_t seg_row(const ScanArgs& a) const { return (b * a.nseg + blockIdx.z) * a.p.dim + d; }
};

// One stage buffer in shared memory.
struct Stage {
  float4* cell;  // [L][CB] {dt, dt * x, x, silu(z) (forward) or z (backward)}
  float2* grad;  // [L][CB] {dy, d dt / d dt_raw} (backward)
  float* bc;     // [span][L][2][N4] B then C rows (fp32), when staged
  template <class Sh>
  __device__ static Stage at(float* base, int buf, bool grad, const ScanArgs& a, Sh) {
    float* s = base + buf * Sh::stage_floats(grad, a.span, a.staged);
    Stage st;
    st.cell = reinterpret_cast<float4*>(s);
    st.grad = reinterpret_cast<float2*>(s + 4 * Sh::L * Sh::kCB);
    st.bc = s + Sh::cell_floats(grad);
    return st;
  }
};

// B/C stage float e of a stage: its offset from the stage's first row of group g0 (-1 past N or
// G, zeros) and its token, as (offset, token) ([span][L][2][N4] from groups g0 + gi: a lane's
// rows of successive tokens at a constant stride, so one address serves a stage's tokens).
template <class Sh>
__device__ __forceinline__ int2 bc_slot(const ScanArgs& a, const Place& f, int e) {
  const ScanParams& p = a.p;
  const int n = e % Sh::kN4, which = (e / Sh::kN4) & 1, r = e / (2 * Sh::kN4), tt = r % Sh::L, gi = r / Sh::L;
  if (e >= Sh::bc_floats(a.span) || n >= p.dstate || f.g0 + gi >= p.groups) return make_int2(-1, tt);
  return make_int2(((tt * p.groups + gi) * p.dstate + n) * 2 + which, tt);  // which in the low bit
}
template <class T>
__device__ __forceinline__ float bc_value(const ScanArgs& a, const Place& f, int64_t t0, int2 slot) {
  const ScanParams& p = a.p;
  if (slot.x < 0 || t0 + slot.y >= f.t_end) return 0.0f;
  const int64_t row = ((f.b * p.seqlen + t0) * p.groups + f.g0) * p.dstate;
  return in<T>(slot.x & 1 ? p.C : p.B, row + (slot.x >> 1));
}

// A thread's share of the next stage, read ahead: the raw x, dt, z (and dy) of its cells
// (token i / CB and channel i % CB for i = tid + k * kThreads) and its first B/C floats (the
// same stage floats e = tid + k * kThreads every stage: their slots are found once).
template <class Sh>
struct Ahead {
  float x[Sh::kCells], dt[Sh::kCells], z[Sh::kCells], dy[Sh::kCells], bc[Sh::kBC > 0 ? Sh::kBC : 1];
  int2 slot[Sh::kBC > 0 ? Sh::kBC : 1];
  __device__ Ahead(const ScanArgs& a, const Place& f) {
#pragma unroll
    for (int k = 0; k < Sh::kBC; ++k) slot[k] = a.staged ? bc_slot<Sh>(a, f, threadIdx.x + k * kThreads) : make_int2(-1, 0);
  }
};

template <class T, class Sh, bool kGrad>
__device__ __forceinline__ void read_ahead(const ScanArgs& a, const Place& f, int64_t t0, Ahead<Sh>& r) {
  const ScanParams& p = a.p;
  const int ld = f.d0 + threadIdx.x % Sh::kCB;
#pragma unroll
  for (int k = 0; k < Sh::kCells; ++k) {
    const int i = threadIdx.x + k * kThreads;
    const int64_t t = t0 + i / Sh::kCB;
    const bool live = i < Sh::L * Sh::kCB && ld < p.dim && t < f.t_end;
    const int64_t o = live ? (f.b * p.seqlen + t) * p.dim + ld : 0;
    r.x[k] = live ? in<T>(p.x, o) : 0.0f;
    r.dt[k] = live ? in<T>(p.dt, o) : 0.0f;
    r.z[k] = live && p.z ? in<T>(p.z, o) : 0.0f;
    if constexpr (kGrad) r.dy[k] = live ? in<T>(p.dy, o) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < Sh::kBC; ++k) r.bc[k] = bc_value<T>(a, f, t0, r.slot[k]);
}

// Forms stage `st` at t0 from the read-ahead registers (dt 0 past the segment, where the
// states then stay; the forward's gate silu(z) when `gate`, else 1); adds the thread's dt to
// dt_sum (channel tid % CB).
template <class T, class Sh, bool kGrad>
__device__ __forceinline__ void form_stage(const ScanArgs& a, const Place& f, int64_t t0, const Ahead<Sh>& r, float bias,
                                           const Stage& st, float& dt_sum, bool gate = false) {
  const ScanParams& p = a.p;
  const bool ld_on = f.d0 + int(threadIdx.x) % Sh::kCB < p.dim;
#pragma unroll
  for (int k = 0; k < Sh::kCells; ++k) {
    const int i = threadIdx.x + k * kThreads;
    if (i >= Sh::L * Sh::kCB) break;
    const bool live = ld_on && t0 + i / Sh::kCB < f.t_end;
    const float raw = r.dt[k] + bias;
    const float dtv = !live ? 0.0f : p.softplus ? softplus_f(raw) : raw;
    dt_sum += dtv;
    // The forward keeps the gate silu(z) (1 without one), the backward z itself.
    const float zc = kGrad ? r.z[k] : gate ? silu_f(r.z[k]) : 1.0f;
    st.cell[i] = make_float4(dtv, dtv * r.x[k], r.x[k], zc);
    if constexpr (kGrad) st.grad[i] = make_float2(r.dy[k], p.softplus ? sigmoid_f(raw) : 1.0f);
  }
  if (!a.staged) return;
  const int total = Sh::bc_floats(a.span);
#pragma unroll
  for (int k = 0; k < Sh::kBC; ++k) {
    const int e = threadIdx.x + k * kThreads;
    if (e < total) st.bc[e] = r.bc[k];
  }
  for (int e = threadIdx.x + Sh::kBC * kThreads; e < total; e += kThreads)
    st.bc[e] = bc_value<T>(a, f, t0, bc_slot<Sh>(a, f, e));
}

// B and C of the thread's SPT states at stage token tt (zeros past N or the segment), from the
// stage or (not kStaged) global memory. kStaged is a kernel parameter, not a.staged: a runtime
// test inside the token loops makes every token its own basic block (SASS: ~80 instructions
// per token and warp in the forward, where the recurrence is 20), so no token's loads overlap
// another's.
template <class T, class Sh, bool kStaged>
__device__ __forceinline__ void bc_of(const ScanArgs& a, const Place& f, const float* bc, int64_t t0, int tt,
                                      float (&Bv)[Sh::SPT], float (&Cv)[Sh::SPT]) {
  const int n0 = f.q * Sh::SPT;
  if constexpr (kStaged) {
    const float* row = bc + (f.gi * Sh::L + tt) * 2 * Sh::kN4 + n0;
#pragma unroll
    for (int s = 0; s < Sh::SPT; s += 4) {
      const float4 bv = *reinterpret_cast<const float4*>(row + s);
      const float4 cv = *reinterpret_cast<const float4*>(row + Sh::kN4 + s);
      Bv[s] = bv.x, Bv[s + 1] = bv.y, Bv[s + 2] = bv.z, Bv[s + 3] = bv.w;
      Cv[s] = cv.x, Cv[s + 1] = cv.y, Cv[s + 2] = cv.z, Cv[s + 3] = cv.w;
    }
    return;
  }
  const ScanParams& p = a.p;
  const int64_t t = t0 + tt;
  const int64_t o = ((f.b * p.seqlen + t) * p.groups + f.g0 + f.gi) * p.dstate;
#pragma unroll
  for (int s = 0; s < Sh::SPT; ++s) {
    const bool live = t < f.t_end && n0 + s < p.dstate;
    Bv[s] = live ? in<T>(p.B, o + n0 + s) : 0.0f;
    Cv[s] = live ? in<T>(p.C, o + n0 + s) : 0.0f;
  }
}

// The thread's SPT entries of an fp32 [.., N] state row (zeros when row is null or past N or
// D), and the store of them.
template <int SPT>
__device__ __forceinline__ void load_states(const ScanParams& p, const Place& f, const float* row, float (&h)[SPT]) {
  const int n0 = f.q * SPT;
#pragma unroll
  for (int s = 0; s < SPT; ++s) h[s] = row && f.on && n0 + s < p.dstate ? row[n0 + s] : 0.0f;
}
template <int SPT>
__device__ __forceinline__ void store_states(const ScanParams& p, const Place& f, float* row, const float (&h)[SPT]) {
  const int n0 = f.q * SPT;
  if (!row || !f.on) return;
#pragma unroll
  for (int s = 0; s < SPT; ++s)
    if (n0 + s < p.dstate) row[n0 + s] = h[s];
}

// A of the thread's states times log2e (the decays are 2^(dt A log2e) on the SFU).
template <int SPT>
__device__ __forceinline__ void load_A2(const ScanParams& p, const Place& f, float (&A2)[SPT]) {
  load_states<SPT>(p, f, static_cast<const float*>(p.A) + int64_t(min(f.d, p.dim - 1)) * p.dstate, A2);
#pragma unroll
  for (int s = 0; s < SPT; ++s) A2[s] *= kLog2e;
}

// The sum of a channel's Q lane partials of buffer row `row` (lane q reads the row of its
// channel's Q lanes).
template <int Q>
__device__ __forceinline__ float channel_sum(const float* row, const Place& f) {
  const float* part = row + f.cw * Q;
  float v = 0.0f;
#pragma unroll
  for (int r = 0; r < Q; r += 4) {
    const float4 pv = *reinterpret_cast<const float4*>(part + r);
    v += (pv.x + pv.y) + (pv.z + pv.w);
  }
  return v;
}

// The sum over a channel's Q lanes (all of them get it).
template <int Q>
__device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
  for (int m = 1; m < Q; m *= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// What a forward pass over a segment produces:
//   output   y (and final_state when the sequence is one segment), from the entering state;
//   ckpt     the backward's checkpoints: the state entering every kChunk tokens (no y);
//   summary  the segment run from zeros: its final state into seg_h and sum dt into seg_dt.
enum class Pass { output, ckpt, summary };

// At most 128 registers (kBlocksPerSm blocks of kThreads: kWarpsPerSm warps per SM): the
// unrolled token groups otherwise take ~165, and 3 blocks per SM measured 1.4x slower.
template <class T, class Sh, Pass kPass, bool kStaged>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) scan_forward_kernel(const ScanArgs a) {
  constexpr int SPT = Sh::SPT;
  constexpr bool kY = kPass == Pass::output;
  const ScanParams& p = a.p;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* ybuf = smem + 2 * Sh::stage_floats(false, a.span, a.staged);  // [kWarps][kYGroup][kRow]
  const Place f(a, Sh{});
  float* yb = ybuf + f.w * kYGroup * kRow;
  const int cc = threadIdx.x % Sh::kCB;
  const float bias = f.d0 + cc < p.dim && p.dt_bias ? static_cast<const float*>(p.dt_bias)[f.d0 + cc] : 0.0f;
  const float skip = f.on && p.D ? static_cast<const float*>(p.D)[f.d] : 0.0f;
  // The state entering the segment: state0 for a single segment, else segment_scan_kernel's.
  const float* entry = kPass == Pass::summary ? nullptr
                       : a.seg_h              ? a.seg_h + f.seg_row(a) * p.dstate
                       : p.state0 ? static_cast<const float*>(p.state0) + (f.b * p.dim + f.d) * p.dstate
                                  : nullptr;
  float A2[SPT], h[SPT];
  load_A2<SPT>(p, f, A2);
  load_states<SPT>(p, f, entry, h);
  float dt_sum = 0.0f;
  Ahead<Sh> ahead(a, f);
  read_ahead<T, Sh, false>(a, f, f.t_begin, ahead);
  int buf = 0;
  for (int64_t t0 = f.t_begin; t0 < f.t_end; t0 += Sh::L, buf ^= 1) {
    const Stage st = Stage::at(smem, buf, false, a, Sh{});
    form_stage<T, Sh, false>(a, f, t0, ahead, bias, st, dt_sum, kY && p.z);
    if (t0 + Sh::L < f.t_end) read_ahead<T, Sh, false>(a, f, t0 + Sh::L, ahead);
    __syncthreads();
#pragma unroll 1
    for (int g8 = 0; g8 < Sh::L && t0 + g8 < f.t_end; g8 += kYGroup) {
      if constexpr (kPass == Pass::ckpt) {
        if (g8 % kChunk == 0) store_states<SPT>(p, f, a.ckpt + ((f.b * a.chunks + (t0 + g8) / kChunk) * p.dim + f.d) * p.dstate, h);
      }
      float yp[kYGroup] = {};
#pragma unroll
      for (int j = 0; j < kYGroup; ++j) {
        const int tt = g8 + j;
        const float2 du = *reinterpret_cast<const float2*>(st.cell + tt * Sh::kCB + f.c);
        float Bv[SPT], Cv[SPT];
        bc_of<T, Sh, kStaged>(a, f, st.bc, t0, tt, Bv, Cv);
#pragma unroll
        for (int s = 0; s < SPT; ++s) {
          h[s] = fast_exp2(du.x * A2[s]) * h[s] + du.y * Bv[s];
          yp[j] += Cv[s] * h[s];
        }
      }
      if constexpr (kY) {
        // (stored after the group's loads, which the stores would otherwise order)
#pragma unroll
        for (int j = 0; j < kYGroup; ++j) yb[j * kRow + f.lane] = yp[j];
        // Token g8 + j of channel c is lane q = j % Q's: the partials summed, the skip term,
        // the gate, the store.
        __syncwarp();
#pragma unroll
        for (int j = f.q; j < kYGroup; j += Sh::Q) {
          const int64_t t = t0 + g8 + j;
          float v = channel_sum<Sh::Q>(yb + j * kRow, f);
          if (f.on && t < f.t_end) {
            const float4 cell = st.cell[(g8 + j) * Sh::kCB + f.c];
            v = (v + skip * cell.z) * cell.w;
            static_cast<T*>(p.y)[f.tok(p, t)] = from_f32<T>(v);
          }
        }
        __syncwarp();
      }
    }
  }
  if constexpr (kPass == Pass::summary) {
    store_states<SPT>(p, f, a.seg_h + f.seg_row(a) * p.dstate, h);
    // The segment's sum of dt per channel: the shares of the threads that formed its cells.
    __syncthreads();
    ybuf[threadIdx.x] = dt_sum;
    __syncthreads();
    if (threadIdx.x < Sh::kCB && f.d0 + int(threadIdx.x) < p.dim) {
      float v = 0.0f;
      for (int k = threadIdx.x; k < kThreads; k += Sh::kCB) v += ybuf[k];
      a.seg_dt[(f.b * a.nseg + blockIdx.z) * p.dim + f.d0 + threadIdx.x] = v;
    }
  } else if constexpr (kY) {
    if (a.nseg == 1) store_states<SPT>(p, f, static_cast<float*>(p.final_state) + (f.b * p.dim + f.d) * p.dstate, h);
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

// The backward kernels' per-warp buffers, in floats: two [kChunk][kRow] sum buffers (y, then
// the dx partials; the d dt partials) and gy [kChunk][32 / Q].
template <class Sh>
constexpr int warp_floats() {
  return 2 * kChunk * kRow + kChunk * Sh::kCW;
}

// The reverse pass's dB, dC sums of a chunk in floats: [slots][kChunk][N4] {dB, dC}, a slot per
// (warp, group of its channels) in that order: one per warp, and one more per group boundary
// inside a warp (at most span - 1 of them, kCW - 1 per warp).
template <class Sh>
constexpr int dbc_floats(int span) {
  return (kWarps + std::min(span - 1, kWarps * (Sh::kCW - 1))) * kChunk * 2 * Sh::kN4;
}

// The first and last group of the block's warp w's channels (those past D count as D - 1).
template <class Sh>
__device__ __forceinline__ int2 warp_groups(const ScanParams& p, const Place& f, int w) {
  const int lo = min(f.d0 + w * Sh::kCW, p.dim - 1), hi = min(f.d0 + (w + 1) * Sh::kCW, p.dim) - 1;
  return make_int2(lo / f.per_group, hi / f.per_group);
}

// The first slot of warp w (dbc_floats): one per group of the warps before it.
template <class Sh>
__device__ __forceinline__ int warp_slot(const ScanParams& p, const Place& f, int w) {
  int slot = 0;
  for (int v = 0; v < w; ++v) {
    const int2 g = warp_groups<Sh>(p, f, v);
    slot += g.y - g.x + 1;
  }
  return slot;
}

constexpr int log2_of(int v) { return v > 1 ? 1 + log2_of(v / 2) : 0; }

// Each of v's V values summed over the warp's channels (the 32 / Q lanes of one q) by a
// transpose-reduce: at each lane bit above q a lane keeps the half of its values that its bit
// selects, sends the other half to its partner and adds the partner's. Lane cw of q ends with
// the sums of values [cw R, cw R + R) in v[0, R), R = V Q / 32: V - R shuffles instead of
// V log2(32 / Q).
template <int Q, int V>
__device__ __forceinline__ void warp_channel_sums(float (&v)[V], int lane) {
#pragma unroll
  for (int l = 0; l < log2_of(32 / Q); ++l) {
    const int m = 16 >> l, n = V >> (l + 1);
    const bool up = lane & m;
#pragma unroll
    for (int i = 0; i < n; ++i) {
      const float keep = up ? v[n + i] : v[i], send = up ? v[i] : v[n + i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, m);
    }
  }
}

// A warp's gy = dy * silu(z) (dy without a gate) of the chunk's tokens into gyb, lane q taking
// tokens j = q (mod Q) of its channel; with a gate and kDz, dz from y before the gate (the
// Q partials in yb) and the thread's dD share (gy x) too.
template <class T, class Sh, bool kDz>
__device__ __forceinline__ void chunk_gy(const ScanArgs& a, const Place& f, const Stage& st, int64_t t0, float skip,
                                         const float* yb, float* gyb, float& dD) {
  const ScanParams& p = a.p;
#pragma unroll
  for (int j = f.q; j < kChunk; j += Sh::Q) {
    const int64_t t = t0 + j;
    float gy = 0.0f;
    if (f.on && t < f.t_end) {
      const float4 cell = st.cell[j * Sh::kCB + f.c];
      gy = st.grad[j * Sh::kCB + f.c].x;
      if (p.z) {
        if constexpr (kDz) {
          const float yv = channel_sum<Sh::Q>(yb + j * kRow, f) + skip * cell.z;
          static_cast<T*>(p.dz)[f.tok(p, t)] = from_f32<T>(gy * yv * silu_grad_f(cell.w));
        }
        gy *= silu_f(cell.w);
      }
      dD += gy * cell.z;
    }
    gyb[j * Sh::kCW + f.cw] = gy;
  }
}

// The backward's segment summaries (several segments only): each segment's chunks walked in
// reverse from a zero gradient, dh_{t-1} = a_t (dh_t + C_t gy_t) (the states themselves are
// not needed); the gradient reaching the segment's entry into seg_g.
template <class T, class Sh, bool kStaged>
__global__ void __launch_bounds__(kThreads) scan_grad_summary_kernel(const ScanArgs a) {
  constexpr int SPT = Sh::SPT;
  const ScanParams& p = a.p;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Place f(a, Sh{});
  float* gyb = smem + 2 * Sh::stage_floats(true, a.span, a.staged) + f.w * warp_floats<Sh>() + 2 * kChunk * kRow;
  const int cc = threadIdx.x % Sh::kCB;
  const float bias = f.d0 + cc < p.dim && p.dt_bias ? static_cast<const float*>(p.dt_bias)[f.d0 + cc] : 0.0f;
  float A2[SPT], dh[SPT] = {};
  load_A2<SPT>(p, f, A2);
  float unused = 0.0f;
  Ahead<Sh> ahead(a, f);
  const int64_t k_first = f.t_begin / kChunk, k_last = (f.t_end + kChunk - 1) / kChunk - 1;
  if (k_last >= k_first) read_ahead<T, Sh, true>(a, f, k_last * kChunk, ahead);
  int buf = 0;
  for (int64_t k = k_last; k >= k_first; --k, buf ^= 1) {
    const int64_t t0 = k * kChunk;
    const Stage st = Stage::at(smem, buf, true, a, Sh{});
    form_stage<T, Sh, true>(a, f, t0, ahead, bias, st, unused);
    if (k > k_first) read_ahead<T, Sh, true>(a, f, t0 - kChunk, ahead);
    __syncthreads();
    chunk_gy<T, Sh, false>(a, f, st, t0, 0.0f, nullptr, gyb, unused);
    __syncwarp();
#pragma unroll
    for (int tt = kChunk - 1; tt >= 0; --tt) {
      const float gyv = gyb[tt * Sh::kCW + f.cw], dl = st.cell[tt * Sh::kCB + f.c].x;
      float Bv[SPT], Cv[SPT];
      bc_of<T, Sh, kStaged>(a, f, st.bc, t0, tt, Bv, Cv);
#pragma unroll
      for (int s = 0; s < SPT; ++s) dh[s] = (dh[s] + Cv[s] * gyv) * fast_exp2(dl * A2[s]);
    }
  }
  store_states<SPT>(p, f, a.seg_g + f.seg_row(a) * p.dstate, dh);
}

// Token tt's dB, dC terms ({g u, gy h} per state of the lane) summed over the warp's channels of
// each of its groups wg (with kOneGroup: one, no masks) into the group's slot of dbc (the warp's
// first at slot).
template <class Sh, bool kOneGroup>
__device__ __forceinline__ void warp_dbc(const Place& f, float* __restrict__ dbc, int tt, int2 wg, int slot,
                                         const float (&terms)[2 * Sh::SPT]) {
  constexpr int V = 2 * Sh::SPT, R = V * Sh::Q / 32;
  const int groups = kOneGroup ? 1 : wg.y - wg.x + 1;
  for (int k = 0; k < groups; ++k) {
    float v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = kOneGroup || f.g0 + f.gi == wg.x + k ? terms[i] : 0.0f;
    warp_channel_sums<Sh::Q>(v, f.lane);
    // Values [cw R, cw R + R) of lane q: floats 2 (q SPT) + cw R.. of the row's {dB, dC} pairs.
    float* row = dbc + ((slot + k) * kChunk + tt) * 2 * Sh::kN4 + 2 * f.q * Sh::SPT + f.cw * R;
    if constexpr (R == 1) {
      row[0] = v[0];
    } else {
#pragma unroll
      for (int r = 0; r < R; r += 2) *reinterpret_cast<float2*>(row + r) = make_float2(v[r], v[r + 1]);
    }
  }
}

// The lane's states over the kPart tokens from j0 of the chunk, from h (left holding the state
// after them): their decays and states into as, hs, and with kY y's partials before the gate
// into yb (where there is a gate).
template <class T, class Sh, bool kStaged, bool kY>
__device__ __forceinline__ void walk_part(const ScanArgs& a, const Place& f, const Stage& st, int64_t t0, int j0,
                                          const float (&A2)[Sh::SPT], float (&h)[Sh::SPT],
                                          float (&as)[kPart][Sh::SPT], float (&hs)[kPart][Sh::SPT], float* yb) {
  constexpr int SPT = Sh::SPT;
#pragma unroll
  for (int i = 0; i < kPart; ++i) {
    const int tt = j0 + i;
    const float2 du = *reinterpret_cast<const float2*>(st.cell + tt * Sh::kCB + f.c);
    float Bv[SPT], Cv[SPT];
    bc_of<T, Sh, kStaged>(a, f, st.bc, t0, tt, Bv, Cv);
    float yp = 0.0f;
#pragma unroll
    for (int s = 0; s < SPT; ++s) {
      as[i][s] = fast_exp2(du.x * A2[s]);
      h[s] = as[i][s] * h[s] + du.y * Bv[s];
      hs[i][s] = h[s];
      yp += Cv[s] * h[s];
    }
    if (kY && a.p.z) yb[tt * kRow + f.lane] = yp;
  }
}

// The reverse scan of the kPart tokens from j0 in scan_backward_kernel (as, hs: their decays
// and states): dB, dC sums into dbc, the partials of dx / dt (P1 = sum g B) and of d dt (P2 =
// sum A g a h_prev) into yb, tb. The pointers are restrict-qualified: the stores then do not
// order the next tokens' loads.
template <class T, class Sh, bool kStaged, bool kOneGroup>
__device__ __forceinline__ void reverse_part(const ScanArgs& a, const Place& f, const float4* __restrict__ cells,
                                             const float* __restrict__ bc, const float* __restrict__ gyb,
                                             float* __restrict__ dbc, float* __restrict__ yb, float* __restrict__ tb,
                                             int64_t t0, int j0, int2 wg, int slot, const float (&A)[Sh::SPT],
                                             const float (&as)[kPart][Sh::SPT], const float (&hs)[kPart][Sh::SPT],
                                             float (&dh)[Sh::SPT], float (&dA)[Sh::SPT]) {
  constexpr int SPT = Sh::SPT, CB = Sh::kCB;
#pragma unroll
  for (int i = kPart - 1; i >= 0; --i) {
    const int tt = j0 + i;
    const float gyv = gyb[tt * Sh::kCW + f.cw];
    const float4 cell = cells[tt * CB + f.c];
    const float dtv = cell.x, u = cell.y;
    float Bv[SPT], Cv[SPT];
    bc_of<T, Sh, kStaged>(a, f, bc, t0, tt, Bv, Cv);
    float P1 = 0.0f, P2 = 0.0f, terms[2 * SPT];
#pragma unroll
    for (int s = 0; s < SPT; ++s) {
      const float g = dh[s] + Cv[s] * gyv;
      terms[2 * s] = g * u;
      terms[2 * s + 1] = gyv * hs[i][s];
      P1 += g * Bv[s];
      const float gah = g * (hs[i][s] - u * Bv[s]);  // g a_t h_{t-1}
      dA[s] += gah * dtv;
      P2 += A[s] * gah;
      dh[s] = g * as[i][s];
    }
    warp_dbc<Sh, kOneGroup>(f, dbc, tt, wg, slot, terms);
    yb[tt * kRow + f.lane] = P1;
    tb[tt * kRow + f.lane] = P2;
  }
}

// The block's dB, dC of the chunk at t0 from the warps' slots in dbc: summed per (token, group,
// state) in warp order, one vector atomic each into a.dBC.
template <class Sh>
__device__ __forceinline__ void add_dbc(const ScanArgs& a, const Place& f, const float2* dbc, int64_t t0) {
  const ScanParams& p = a.p;
  for (int e = threadIdx.x; e < kChunk * Sh::kN4; e += kThreads) {
    const int j = e / Sh::kN4, n = e % Sh::kN4;
    const int64_t t = t0 + j;
    if (n >= p.dstate || t >= f.t_end) continue;
    int g = f.g0;
    auto add = [&](float2 v) {
      float2* o = a.dBC + ((f.b * p.seqlen + t) * p.groups + g) * p.dstate + n;
#if __CUDA_ARCH__ >= 900
      atomicAdd(o, v);  // one vector atomic for both
#else
      atomicAdd(&o->x, v.x);  // the generic PTX (sm_80) has no float2 atomics
      atomicAdd(&o->y, v.y);
#endif
    };
    float2 v = make_float2(0.0f, 0.0f);
    for (int w = 0, slot = 0; w < kWarps && f.d0 + w * Sh::kCW < p.dim; ++w) {
      const int2 wg = warp_groups<Sh>(p, f, w);
      for (int gg = wg.x; gg <= wg.y; ++gg, ++slot) {
        if (gg != g) {
          add(v);
          v = make_float2(0.0f, 0.0f);
          g = gg;
        }
        const float2 r = dbc[(slot * kChunk + j) * Sh::kN4 + n];
        v.x += r.x, v.y += r.y;
      }
    }
    add(v);
  }
}

// The blocks per SM scan_backward_kernel is compiled for (registers: at most 65536 / (kThreads
// blocks)): with B/C staged, as many as its shared memory lets share an H100 / H200 SM
// (kSmPerSm, kSmReserved per block; one group per block), at most kBlocksPerSm (4 at d_state
// <= 32). Unstaged (many groups per block), 1: its per-token global addresses spill at 128.
constexpr int kSmPerSm = 228 << 10, kSmReserved = 1 << 10;
template <class Sh, bool kStaged>
constexpr int backward_blocks() {
  const int floats = 2 * (Sh::cell_floats(true) + Sh::bc_floats(1)) + dbc_floats<Sh>(1) + kWarps * warp_floats<Sh>();
  return kStaged ? std::max(1, std::min(kBlocksPerSm, kSmPerSm / (floats * int(sizeof(float)) + kSmReserved))) : 1;
}

template <class T, class Sh, bool kStaged>
__global__ void __launch_bounds__(kThreads, backward_blocks<Sh, kStaged>()) scan_backward_kernel(const ScanArgs a) {
  constexpr int SPT = Sh::SPT, CB = Sh::kCB;
  const ScanParams& p = a.p;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const Place f(a, Sh{});
  // The warps' dB, dC sums of the chunk (dbc_floats), then the warps' buffers.
  float* dbc = smem + 2 * Sh::stage_floats(true, a.span, a.staged);
  float* yb = dbc + dbc_floats<Sh>(a.span) + f.w * warp_floats<Sh>();
  float* tb = yb + kChunk * kRow;
  float* gyb = tb + kChunk * kRow;
  const int cc = threadIdx.x % CB;
  const float bias = f.d0 + cc < p.dim && p.dt_bias ? static_cast<const float*>(p.dt_bias)[f.d0 + cc] : 0.0f;
  const float skip = f.on && p.D ? static_cast<const float*>(p.D)[f.d] : 0.0f;
  const int2 wg = warp_groups<Sh>(p, f, f.w);
  const int slot = warp_slot<Sh>(p, f, f.w);
  const bool one_group = Sh::kCW == 1 || wg.x == wg.y;  // (warp-uniform)
  float A[SPT], A2[SPT], dh[SPT], dA[SPT] = {};
  load_A2<SPT>(p, f, A2);
  load_states<SPT>(p, f, static_cast<const float*>(p.A) + int64_t(min(f.d, p.dim - 1)) * p.dstate, A);
  // The gradient leaving the segment: d_final_state for a single segment, else segment_scan_kernel's.
  const float* dfin = a.seg_g           ? a.seg_g + f.seg_row(a) * p.dstate
                      : p.d_final_state ? static_cast<const float*>(p.d_final_state) + (f.b * p.dim + f.d) * p.dstate
                                        : nullptr;
  load_states<SPT>(p, f, dfin, dh);
  float dD = 0.0f, dbias = 0.0f, unused = 0.0f;  // this lane's shares of channel d
  auto ckpt_row = [&](int64_t k) { return a.ckpt + ((f.b * a.chunks + k) * p.dim + f.d) * p.dstate; };
  Ahead<Sh> ahead(a, f);
  float entry[SPT];
  const int64_t k_first = f.t_begin / kChunk, k_last = (f.t_end + kChunk - 1) / kChunk - 1;
  if (k_last >= k_first) {
    read_ahead<T, Sh, true>(a, f, k_last * kChunk, ahead);
    load_states<SPT>(p, f, ckpt_row(k_last), entry);
  }
  int buf = 0;
  for (int64_t k = k_last; k >= k_first; --k, buf ^= 1) {
    const int64_t t0 = k * kChunk;
    const Stage st = Stage::at(smem, buf, true, a, Sh{});
    form_stage<T, Sh, true>(a, f, t0, ahead, bias, st, unused);
    if (k > k_first) read_ahead<T, Sh, true>(a, f, t0 - kChunk, ahead);
    __syncthreads();
    // The chunk walked from its checkpoint for y's partials before the gate, keeping the state
    // entering each part and the last part's decays and states; the parts reversed from the
    // last, each but the last walked again from its entering state first.
    float h[SPT], hp[kParts][SPT], as[kPart][SPT], hs[kPart][SPT];
#pragma unroll
    for (int s = 0; s < SPT; ++s) h[s] = entry[s];
#pragma unroll
    for (int i = 0; i < kParts; ++i) {
#pragma unroll
      for (int s = 0; s < SPT; ++s) hp[i][s] = h[s];
      walk_part<T, Sh, kStaged, true>(a, f, st, t0, i * kPart, A2, h, as, hs, yb);
    }
    if (k > k_first) load_states<SPT>(p, f, ckpt_row(k - 1), entry);
    __syncwarp();
    chunk_gy<T, Sh, true>(a, f, st, t0, skip, yb, gyb, dD);
    __syncwarp();
#pragma unroll
    for (int i = kParts - 1; i >= 0; --i) {
      if (i < kParts - 1) walk_part<T, Sh, kStaged, false>(a, f, st, t0, i * kPart, A2, hp[i], as, hs, yb);
      if (one_group)
        reverse_part<T, Sh, kStaged, true>(a, f, st.cell, st.bc, gyb, dbc, yb, tb, t0, i * kPart, wg, slot, A, as,
                                           hs, dh, dA);
      else
        reverse_part<T, Sh, kStaged, false>(a, f, st.cell, st.bc, gyb, dbc, yb, tb, t0, i * kPart, wg, slot, A, as,
                                            hs, dh, dA);
    }
    __syncwarp();
    // dx and d dt_raw per token, lane q taking tokens j = q (mod Q).
#pragma unroll
    for (int j = f.q; j < kChunk; j += Sh::Q) {
      const int64_t t = t0 + j;
      if (!f.on || t >= f.t_end) continue;
      const float P1 = channel_sum<Sh::Q>(yb + j * kRow, f), P2 = channel_sum<Sh::Q>(tb + j * kRow, f);
      const float4 cell = st.cell[j * CB + f.c];
      const float draw = (cell.z * P1 + P2) * st.grad[j * CB + f.c].y;
      static_cast<T*>(p.dx)[f.tok(p, t)] = from_f32<T>(cell.x * P1 + skip * gyb[j * Sh::kCW + f.cw]);
      static_cast<T*>(p.d_dt)[f.tok(p, t)] = from_f32<T>(draw);
      dbias += draw;
    }
    __syncthreads();
    add_dbc<Sh>(a, f, reinterpret_cast<const float2*>(dbc), t0);
  }
  // d_state0 comes from segment_scan_kernel when there are several segments.
  if (a.nseg == 1) store_states<SPT>(p, f, static_cast<float*>(p.d_state0) + (f.b * p.dim + f.d) * p.dstate, dh);
  store_states<SPT>(p, f, a.dA + f.seg_row(a) * p.dstate, dA);
  dD = lanes_sum<Sh::Q>(dD);
  dbias = lanes_sum<Sh::Q>(dbias);
  if (f.q == 0 && f.on) {
    a.dD[f.seg_row(a)] = dD;
    a.dbias[f.seg_row(a)] = dbias;
  }
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

// Calls f.template operator()<T, Q, SPT>() for the call's dtype and d_state: the fewest lanes
// per channel at 4 states each (8 past 128 states).
template <class F>
void dispatch(const ScanParams& p, F&& f) {
  LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "selective_scan", [&] {
    if (p.dstate <= 16) return f.template operator()<scalar_t, 4, 4>();
    if (p.dstate <= 32) return f.template operator()<scalar_t, 8, 4>();
    if (p.dstate <= 64) return f.template operator()<scalar_t, 16, 4>();
    if (p.dstate <= 128) return f.template operator()<scalar_t, 32, 4>();
    return f.template operator()<scalar_t, 32, 8>();
  });
}

int current_device() {
  int dev = 0;
  LCTX_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

// The groups a block of cb channels touches, at most over the call.
int group_span(const ScanParams& p, int cb) {
  const int per_group = p.dim / p.groups;
  int span = 1;
  for (int d0 = 0; d0 < p.dim; d0 += cb)
    span = std::max(span, (std::min(d0 + cb, p.dim) - 1) / per_group - d0 / per_group + 1);
  return span;
}

// Segments until there are kWarpsPerSm warps per SM: one warp per SM sub-partition (d_inner
// 4096, d_state 16, no segments) left the kernels latency-bound (0.5 instructions per cycle per
// SM, shared-memory loads waited on); 16 measured 2.2x faster forward and 1.7x fwd+bwd at
// T = 32k on an H200 despite the summary pass (32: the same). Each segment is at least
// kMinSegChunks chunks (a segment's setup and the segment scan cost).
constexpr int kMinSegChunks = 4;

ScanArgs make_args(const ScanParams& p) {
  ScanArgs a;
  a.p = p;
  a.chunks = (p.seqlen + kChunk - 1) / kChunk;
  int64_t warps = 1;
  dispatch(p, [&]<class T, int Q, int SPT>() {
    using Sh = Shape<Q, SPT, kChunk>;
    warps = std::max<int64_t>(p.batch * ((p.dim + Sh::kCB - 1) / Sh::kCB) * kWarps, 1);
    a.span = group_span(p, Sh::kCB);
  });
  const int64_t want = std::max<int64_t>(int64_t(kWarpsPerSm) * sm_count(current_device()) / warps, 1);
  a.seg_chunks = std::max<int64_t>((a.chunks + want - 1) / want, kMinSegChunks);
  a.nseg = std::max<int64_t>((a.chunks + a.seg_chunks - 1) / a.seg_chunks, 1);
  return a;
}

// Launches kernel(std::bool_constant<staged>) over (channel blocks, batch, segments) with
// `extra` floats of shared memory past its double-buffered stage (B/C staged when that stage
// fits kStageBudget).
template <class Sh, class K>
void launch(K kernel_of, ScanArgs a, bool grad, int extra, cudaStream_t st, const char* what) {
  a.staged = 2 * Sh::bc_floats(a.span) * int(sizeof(float)) <= kStageBudget;
  const auto kernel = a.staged ? kernel_of(std::true_type{}) : kernel_of(std::false_type{});
  const int smem = (2 * Sh::stage_floats(grad, a.span, a.staged) + extra) * int(sizeof(float));
  LCTX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  LCTX_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  const dim3 grid((a.p.dim + Sh::kCB - 1) / Sh::kCB, static_cast<unsigned>(a.p.batch), static_cast<unsigned>(a.nseg));
  kernel<<<grid, kThreads, smem, st>>>(a);
  LCTX_CUDA_CHECK_LAUNCH(what);
}

// One forward pass (output, checkpoints or segment summaries) over a's segments.
void forward_pass(const ScanArgs& a, Pass pass, cudaStream_t st) {
  dispatch(a.p, [&]<class T, int Q, int SPT>() {
    using Sh = Shape<Q, SPT, kFwdRun>;
    const int extra = kWarps * kYGroup * kRow;
    auto run = [&]<Pass kPass>(const char* what) {
      launch<Sh>([](auto staged) { return scan_forward_kernel<T, Sh, kPass, staged.value>; }, a, false, extra, st,
                 what);
    };
    switch (pass) {
      case Pass::output: return run.template operator()<Pass::output>("selective_scan_forward");
      case Pass::ckpt: return run.template operator()<Pass::ckpt>("selective_scan_backward (checkpoints)");
      case Pass::summary: return run.template operator()<Pass::summary>("selective_scan (segment summaries)");
    }
  });
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
void enter_segments(const ScanArgs& a, void* final_state, cudaStream_t st, PhaseLog& log) {
  if (a.nseg == 1) return;
  forward_pass(a, Pass::summary, st);
  log.mark("summaries");
  scan_segments(a, a.seg_h, a.p.state0, final_state, false, st);
  log.mark("segment_scan");
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
  PhaseLog log("selective_scan forward", dev, s);
  enter_segments(a, p.final_state, st, log);
  forward_pass(a, Pass::output, st);
  log.mark("output");
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
  PhaseLog log("selective_scan backward", dev, s);
  if (bc > 0) LCTX_CUDA_CHECK(cudaMemsetAsync(a.dBC, 0, bc * sizeof(float2), st));
  if (p.batch > 0 && p.dim > 0) {
    enter_segments(a, nullptr, st, log);
    forward_pass(a, Pass::ckpt, st);
    log.mark("checkpoints");
    dispatch(p, [&]<class T, int Q, int SPT>() {
      using Sh = Shape<Q, SPT, kChunk>;
      const int warps = kWarps * warp_floats<Sh>();
      if (nseg > 1) {
        launch<Sh>([](auto staged) { return scan_grad_summary_kernel<T, Sh, staged.value>; }, a, true, warps, st,
                   "selective_scan_backward (summaries)");
        log.mark("grad_summaries");
        scan_segments(a, a.seg_g, p.d_final_state, p.d_state0, true, st);
        log.mark("grad_segment_scan");
      }
      launch<Sh>([](auto staged) { return scan_backward_kernel<T, Sh, staged.value>; }, a, true,
                 dbc_floats<Sh>(a.span) + warps, st, "selective_scan_backward");
      log.mark("reverse");
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
  log.mark("sums");
  if (bc > 0) {
    LCTX_DISPATCH_CUDA_FLOAT(p.dtype, "selective_scan_backward", [&] {
      split_bc_kernel<scalar_t><<<grid_size(bc, kThreads), kThreads, 0, st>>>(
          static_cast<scalar_t*>(p.dB), static_cast<scalar_t*>(p.dC), a.dBC, bc);
      LCTX_CUDA_CHECK_LAUNCH("selective_scan_backward (dB, dC)");
    });
    log.mark("dB_dC");
  }
  deallocate_async(scratch, dev, s);
}

}  // namespace lctx::ssm
