// The selective scan on the CPU (f32/f64): the chunked algorithm the CUDA kernel will follow
// (mamba_ssm's selective_scan_fwd/bwd: a block per (batch, channel), the sequence in chunks,
// the states of a chunk scanned one after another from the prefix carried across chunks).
// Forward: one OpenMP task per (batch, channel). Backward: one task per (batch, group), walking
// the group's channels in turn, so dB and dC (sums over the channels of a group) need no
// atomics; dA, dD and d_dt_bias (sums over the batch) go through per-batch partials summed in
// batch order, so results do not depend on the thread count. Per channel the backward first
// runs the forward to keep each chunk's entry state, then walks the chunks in reverse: it
// recomputes the chunk's states from its entry state and runs the reverse scan
//   dh_t = C_t gy_t + exp(dt_{t+1} A) dh_{t+1}   (dh after the last token: d_final_state)
// with gy the gradient of y before the gate; with a_t = exp(dt_t A):
//   dB_t += dh_t dt_t x_t, dx_t += dh_t dt_t B_t (+ gy_t D), ddt_t += dh_t (B_t x_t + A a_t h_{t-1}),
//   dA += dh_t dt_t a_t h_{t-1}, dC_t += gy_t h_t, d_state0 = a_1 dh_1.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ssm/selective_scan_params.h"
#include "ssm/ssm_math.h"

namespace lctx::ssm {

namespace {

using detail::sigmoid;
using detail::silu;
using detail::silu_grad;
using detail::softplus;

// One (batch, channel) of a call.
template <class T>
struct Channel {
  const ScanParams& p;
  int64_t b;
  int d;

  int64_t tok(int64_t t) const { return (b * p.seqlen + t) * p.dim + d; }  // into x, dt, z, y, dy
  int64_t bc(int64_t t) const { return ((b * p.seqlen + t) * p.groups + d / (p.dim / p.groups)) * p.dstate; }
  int64_t state() const { return (b * p.dim + d) * p.dstate; }  // into the [B, D, N] states
  T in(const void* base, int64_t i) const { return static_cast<const T*>(base)[i]; }
  T skip() const { return p.D ? in(p.D, d) : T(0); }
};

// Buffers of one chunk of one channel: rows t0 .. t0 + n.
template <class T>
struct Chunk {
  int64_t t0 = 0, n = 0;
  std::vector<T> x, raw, dt, y;  // [n]: x, dt_raw + dt_bias, dt, y before the gate
  std::vector<T> h;              // [n, N]: the states after each token (backward)
  std::vector<T> gy, dx, ddt;    // [n]: the gradient of y before the gate, dx, d(dt)

  explicit Chunk(const ScanParams& p) {
    const int64_t c = std::min<int64_t>(p.chunk, std::max<int64_t>(p.seqlen, 1));
    for (auto* v : {&x, &raw, &dt, &y, &gy, &dx, &ddt}) v->resize(c);
  }
};

// Runs chunk [t0, t0 + n) of a channel from state h[N] (left as the chunk's exit state):
// fills c.x, c.raw, c.dt, c.y and, when `keep`, c.h.
template <class T>
void run_chunk(Chunk<T>& c, const Channel<T>& ch, int64_t t0, T* h, bool keep) {
  const ScanParams& p = ch.p;
  c.t0 = t0;
  c.n = std::min(p.chunk, p.seqlen - t0);
  const T bias = p.dt_bias ? ch.in(p.dt_bias, ch.d) : T(0), skip = ch.skip();
  for (int64_t i = 0; i < c.n; ++i) {
    c.x[i] = ch.in(p.x, ch.tok(t0 + i));
    c.raw[i] = ch.in(p.dt, ch.tok(t0 + i)) + bias;
    c.dt[i] = p.softplus ? softplus(c.raw[i]) : c.raw[i];
    c.y[i] = skip * c.x[i];
  }
  if (keep) c.h.resize(c.n * p.dstate);
  const T* A = static_cast<const T*>(p.A) + static_cast<int64_t>(ch.d) * p.dstate;
  for (int n = 0; n < p.dstate; ++n) {
    T hn = h[n];
    for (int64_t i = 0; i < c.n; ++i) {
      const int64_t o = ch.bc(t0 + i) + n;
      hn = std::exp(c.dt[i] * A[n]) * hn + c.dt[i] * ch.in(p.B, o) * c.x[i];
      c.y[i] += ch.in(p.C, o) * hn;
      if (keep) c.h[i * p.dstate + n] = hn;
    }
    h[n] = hn;
  }
}

template <class T>
void forward(const ScanParams& p) {
  const int64_t tasks = p.batch * p.dim;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const Channel<T> ch{p, task / p.dim, static_cast<int>(task % p.dim)};
    Chunk<T> c(p);
    T* h = static_cast<T*>(p.final_state) + ch.state();
    for (int n = 0; n < p.dstate; ++n) h[n] = p.state0 ? ch.in(p.state0, ch.state() + n) : T(0);
    for (int64_t t0 = 0; t0 < p.seqlen; t0 += p.chunk) {
      run_chunk(c, ch, t0, h, false);
      for (int64_t i = 0; i < c.n; ++i) {
        const int64_t o = ch.tok(t0 + i);
        static_cast<T*>(p.y)[o] = p.z ? c.y[i] * silu(ch.in(p.z, o)) : c.y[i];
      }
    }
  }
}

// Per-batch partial sums of the batch-summed gradients: dA [B, D, N], dD and d_dt_bias [B, D].
template <class T>
struct Partials {
  std::vector<T> dA, dD, dbias;
  explicit Partials(const ScanParams& p)
      : dA(p.batch * p.dim * p.dstate, T(0)), dD(p.batch * p.dim, T(0)), dbias(p.batch * p.dim, T(0)) {}
};

// The backward of one channel (see the file comment); dB and dC rows of its group accumulate.
template <class T>
void backward_channel(const Channel<T>& ch, Partials<T>& part, Chunk<T>& c) {
  const ScanParams& p = ch.p;
  const int N = p.dstate;
  const int64_t chunks = (p.seqlen + p.chunk - 1) / p.chunk;
  std::vector<T> entry((chunks + 1) * N), dh(N);
  for (int n = 0; n < N; ++n) entry[n] = p.state0 ? ch.in(p.state0, ch.state() + n) : T(0);
  for (int64_t k = 0; k < chunks; ++k) {
    std::copy_n(&entry[k * N], N, &entry[(k + 1) * N]);
    run_chunk(c, ch, k * p.chunk, &entry[(k + 1) * N], false);
  }
  for (int n = 0; n < N; ++n) dh[n] = p.d_final_state ? ch.in(p.d_final_state, ch.state() + n) : T(0);
  const T* A = static_cast<const T*>(p.A) + static_cast<int64_t>(ch.d) * N;
  T* dA = &part.dA[ch.state()];
  T *dB = static_cast<T*>(p.dB), *dC = static_cast<T*>(p.dC);
  const T skip = ch.skip();
  for (int64_t k = chunks - 1; k >= 0; --k) {
    std::vector<T> h(&entry[k * N], &entry[(k + 1) * N]);
    run_chunk(c, ch, k * p.chunk, h.data(), true);
    for (int64_t i = 0; i < c.n; ++i) {
      const int64_t o = ch.tok(c.t0 + i);
      const T g = ch.in(p.dy, o);
      if (p.z) {
        const T zi = ch.in(p.z, o);
        static_cast<T*>(p.dz)[o] = g * c.y[i] * silu_grad(zi);
        c.gy[i] = g * silu(zi);
      } else {
        c.gy[i] = g;
      }
      part.dD[ch.b * p.dim + ch.d] += c.gy[i] * c.x[i];
      c.dx[i] = c.gy[i] * skip;
      c.ddt[i] = T(0);
    }
    for (int n = 0; n < N; ++n) {
      T dhn = dh[n], dAn = T(0);
      for (int64_t i = c.n - 1; i >= 0; --i) {
        const int64_t o = ch.bc(c.t0 + i) + n;
        const T hprev = i > 0 ? c.h[(i - 1) * N + n] : entry[k * N + n];
        const T a = std::exp(c.dt[i] * A[n]), Bn = ch.in(p.B, o);
        dhn += ch.in(p.C, o) * c.gy[i];
        dC[o] += c.gy[i] * c.h[i * N + n];
        dB[o] += dhn * c.dt[i] * c.x[i];
        c.dx[i] += dhn * c.dt[i] * Bn;
        c.ddt[i] += dhn * (Bn * c.x[i] + A[n] * a * hprev);
        dAn += dhn * c.dt[i] * a * hprev;
        dhn *= a;
      }
      dh[n] = dhn;
      dA[n] += dAn;
    }
    for (int64_t i = 0; i < c.n; ++i) {
      const int64_t o = ch.tok(c.t0 + i);
      const T draw = p.softplus ? c.ddt[i] * sigmoid(c.raw[i]) : c.ddt[i];
      static_cast<T*>(p.dx)[o] = c.dx[i];
      static_cast<T*>(p.d_dt)[o] = draw;
      part.dbias[ch.b * p.dim + ch.d] += draw;
    }
  }
  std::copy_n(dh.data(), N, static_cast<T*>(p.d_state0) + ch.state());
}

// out[i] = sum over b of part[b * n + i] (nothing when out is nullptr).
template <class T>
void sum_batches(void* out, const std::vector<T>& part, int64_t batch, int64_t n) {
  if (!out) return;
  T* o = static_cast<T*>(out);
  std::fill_n(o, n, T(0));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i) o[i] += part[b * n + i];
}

template <class T>
void backward(const ScanParams& p) {
  const int per_group = p.dim / p.groups;
  const int64_t tasks = p.batch * p.groups;
  Partials<T> part(p);
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / p.groups;
    const int g = static_cast<int>(task % p.groups);
    for (int64_t t = 0; t < p.seqlen; ++t) {
      const int64_t o = ((b * p.seqlen + t) * p.groups + g) * p.dstate;
      std::fill_n(static_cast<T*>(p.dB) + o, p.dstate, T(0));
      std::fill_n(static_cast<T*>(p.dC) + o, p.dstate, T(0));
    }
    Chunk<T> c(p);
    for (int d = g * per_group; d < (g + 1) * per_group; ++d) backward_channel(Channel<T>{p, b, d}, part, c);
  }
  sum_batches(p.dA, part.dA, p.batch, static_cast<int64_t>(p.dim) * p.dstate);
  sum_batches(p.dD, part.dD, p.batch, p.dim);
  sum_batches(p.d_dt_bias, part.dbias, p.batch, p.dim);
}

}  // namespace

void selective_scan_forward_cpu(const ScanParams& p) {
  if (p.dtype == DType::f64)
    forward<double>(p);
  else
    forward<float>(p);
}

void selective_scan_backward_cpu(const ScanParams& p) {
  if (p.dtype == DType::f64)
    backward<double>(p);
  else
    backward<float>(p);
}

}  // namespace lctx::ssm
