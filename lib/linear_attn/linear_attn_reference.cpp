// Linear attention on the CPU (f32/f64): the chunked algorithm the CUDA kernels will follow.
// One OpenMP task per (batch, state head) walks the sequence in chunks of p.chunk tokens.
// Per chunk, with A_i the cumulative log-decay inside the chunk (A_i = sum of a_t for chunk
// tokens t <= i; all zeros without decay) and U the output before normalisation:
//   U_i   = e^{A_i} q_i^T S_in  +  sum_{j <= i} e^{A_i - A_j} (q_i . k_j) v_j        (causal)
//   S_out = e^{A_L} S_in  +  sum_j e^{A_L - A_j} k_j v_j^T                          (L: last row)
// Only ratios with i >= j are formed, so every exponent is <= 0. The backward recomputes the
// chunk-entry states (one per chunk, per task) and walks the chunks in reverse with dS, the
// gradient of the state leaving the chunk; the decay gradient is dA_i = q_i.dq_i - k_i.dk_i
// (+ <S_out, dS> at the last row), summed from the end of the chunk.
// The non-causal form is the same chunk code with no intra-chunk term, every query reading the
// whole-sequence state and every key the whole-sequence state gradient. Normalisation appends
// a column of ones to v: the last state column is z and the last output column the denominator.
#include <algorithm>
#include <cmath>
#include <vector>

#include "linear_attn/linear_attn_params.h"
#include "ops/matmul.h"  // Trans

namespace lctx::linear_attn {

namespace {

using ops::Trans;

// c[n x m] = beta * c + op(a) op(b), op(a) [n x kd], op(b) [kd x m], row-major (chunk-sized).
template <class T>
void gemm(T* c, const T* a, const T* b, int64_t n, int64_t kd, int64_t m, Trans ta, Trans tb, T beta) {
  for (int64_t i = 0; i < n; ++i) {
    T* ci = c + i * m;
    for (int64_t j = 0; j < m; ++j) ci[j] = beta == T(0) ? T(0) : beta * ci[j];
    for (int64_t kk = 0; kk < kd; ++kk) {
      const T aik = ta == Trans::none ? a[i * kd + kk] : a[kk * n + i];
      if (tb == Trans::none) {
        const T* bk = b + kk * m;
        for (int64_t j = 0; j < m; ++j) ci[j] += aik * bk[j];
      } else {
        for (int64_t j = 0; j < m; ++j) ci[j] += aik * b[j * kd + kk];
      }
    }
  }
}

template <class T>
void scale_rows(T* x, const T* w, int64_t n, int64_t m) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) x[i * m + j] *= w[i];
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Per-thread buffers of one chunk of one (batch, state head): rows t0 .. t0 + n.
template <class T>
struct Chunk {
  int64_t t0 = 0, n = 0;
  std::vector<T> q, k, v, dout;  // [n, Dk], [n, Dk], [n, cols] (ones column when normalised), [n, Dv]
  std::vector<T> a, ea, wl;      // A_i, e^{A_i}, e^{A_L - A_i}
  std::vector<T> p;              // [n, n]: e^{A_i - A_j} (q_i . k_j) for j <= i, else 0
  std::vector<T> g;              // [n, n]: e^{A_i - A_j} (du_i . v_j) for j <= i, else 0
  std::vector<T> u, du, dq, dk, dv, da;

  explicit Chunk(const LinearAttnParams& prm) {
    const int64_t c = std::min<int64_t>(prm.chunk, std::max<int64_t>(prm.seqlen, 1)), cols = prm.state_cols();
    for (auto* b : {&q, &k, &dq, &dk}) b->resize(c * prm.dim_k);
    for (auto* b : {&v, &u, &du, &dv}) b->resize(c * cols);
    dout.resize(c * prm.dim_v);
    for (auto* b : {&a, &ea, &wl, &da}) b->resize(c);
    for (auto* b : {&p, &g}) b->resize(c * c);
  }
};

// One (batch, state head): row pointers of its inputs and outputs.
template <class T>
struct Task {
  const LinearAttnParams& p;
  int64_t b;
  int h;

  const T* q(int64_t t) const { return row(p.q, p.q_stride, p.heads_q, t); }
  const T* k(int64_t t) const { return row(p.k, p.k_stride, p.heads_k, t); }
  const T* v(int64_t t) const { return row(p.v, p.v_stride, p.heads_v, t); }
  const T* dout(int64_t t) const { return row(p.dout, p.dout_stride, p.heads, t); }
  T* o(int64_t t) const { return static_cast<T*>(p.o) + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2]; }
  T log_decay(int64_t t) const {
    const T* g = static_cast<const T*>(p.log_decay);
    return p.decay_per_token ? g[b * p.decay_stride[0] + t * p.decay_stride[1] + h] : g[h];
  }
  int64_t state_offset() const { return (b * p.heads + h) * p.state_size(); }

 private:
  // Row t of input head h / (H / heads) of a [B, S, heads, D] tensor.
  const T* row(const void* base, const int64_t (&st)[3], int heads, int64_t t) const {
    return static_cast<const T*>(base) + b * st[0] + t * st[1] + h / (p.heads / heads) * st[2];
  }
};

// Loads chunk rows [t0, t0 + n) of a task with its decay factors.
template <class T>
void load_chunk(Chunk<T>& c, const Task<T>& task, int64_t t0) {
  const LinearAttnParams& p = task.p;
  const int64_t n = std::min(p.chunk, p.seqlen - t0), cols = p.state_cols();
  c.t0 = t0;
  c.n = n;
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(task.q(t0 + i), p.dim_k, &c.q[i * p.dim_k]);
    std::copy_n(task.k(t0 + i), p.dim_k, &c.k[i * p.dim_k]);
    std::copy_n(task.v(t0 + i), p.dim_v, &c.v[i * cols]);
    if (p.normalize) c.v[i * cols + p.dim_v] = T(1);
    if (p.dout) std::copy_n(task.dout(t0 + i), p.dim_v, &c.dout[i * p.dim_v]);
  }
  for (int64_t i = 0; i < n; ++i) c.a[i] = (i > 0 ? c.a[i - 1] : T(0)) + (p.log_decay ? task.log_decay(t0 + i) : T(0));
  for (int64_t i = 0; i < n; ++i) {
    c.ea[i] = std::exp(c.a[i]);
    c.wl[i] = std::exp(c.a[n - 1] - c.a[i]);
  }
}

// x[n x n] = e^{A_i - A_j} x for j <= i, 0 above the diagonal: the causal decay mask.
template <class T>
void decay_mask(T* x, const Chunk<T>& c) {
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t j = 0; j < c.n; ++j) x[i * c.n + j] = j <= i ? x[i * c.n + j] * std::exp(c.a[i] - c.a[j]) : T(0);
}

// U = diag(e^A) Q S_q (+ P V, causal; P is kept for the backward).
template <class T>
void chunk_output(Chunk<T>& c, const LinearAttnParams& p, const T* s_q) {
  const int64_t n = c.n, cols = p.state_cols();
  gemm(c.u.data(), c.q.data(), s_q, n, p.dim_k, cols, Trans::none, Trans::none, T(0));
  scale_rows(c.u.data(), c.ea.data(), n, cols);
  if (!p.causal) return;
  gemm(c.p.data(), c.q.data(), c.k.data(), n, p.dim_k, n, Trans::none, Trans::transpose, T(0));
  decay_mask(c.p.data(), c);
  gemm(c.u.data(), c.p.data(), c.v.data(), n, n, cols, Trans::none, Trans::none, T(1));
}

// S = e^{A_L} S + sum_j e^{A_L - A_j} k_j v_j^T (k rows scaled in c.dk, free until chunk_grads).
template <class T>
void advance_state(T* s, Chunk<T>& c, const LinearAttnParams& p) {
  const int64_t n = c.n, cols = p.state_cols();
  std::copy_n(c.k.data(), n * p.dim_k, c.dk.data());
  scale_rows(c.dk.data(), c.wl.data(), n, p.dim_k);
  const T decay = c.ea[n - 1];
  gemm(s, c.dk.data(), c.v.data(), p.dim_k, n, cols, Trans::transpose, Trans::none, decay);
}

// The output rows of U (o = U, or U[:Dv] / (U[Dv] + eps) normalised) into o.
template <class T>
void store_output(const Chunk<T>& c, const Task<T>& task) {
  const LinearAttnParams& p = task.p;
  const int64_t cols = p.state_cols();
  for (int64_t i = 0; i < c.n; ++i) {
    const T* ui = &c.u[i * cols];
    const T inv = p.normalize ? T(1) / (ui[p.dim_v] + static_cast<T>(p.eps)) : T(1);
    T* oi = task.o(c.t0 + i);
    for (int d = 0; d < p.dim_v; ++d) oi[d] = ui[d] * inv;
  }
}

// dU from dO and U: dO itself, or normalised (den = U[Dv] + eps, o = U[:Dv] / den)
// dU[:Dv] = dO / den, dU[Dv] = -(dO . o) / den.
template <class T>
void output_grad(Chunk<T>& c, const LinearAttnParams& p) {
  const int64_t cols = p.state_cols();
  for (int64_t i = 0; i < c.n; ++i) {
    const T* ui = &c.u[i * cols];
    const T* doi = &c.dout[i * p.dim_v];
    T* dui = &c.du[i * cols];
    const T inv = p.normalize ? T(1) / (ui[p.dim_v] + static_cast<T>(p.eps)) : T(1);
    for (int d = 0; d < p.dim_v; ++d) dui[d] = doi[d] * inv;
    if (p.normalize) dui[p.dim_v] = -dot(doi, ui, p.dim_v) * inv * inv;
  }
}

// dQ, dK, dV of a chunk given dU, the state its queries read (s_q) and the gradient of the
// state its keys write into (ds_k):
//   dQ = diag(e^A) dU S_q^T + G K,  dK = diag(w) V dS_k^T + G^T Q,  dV = diag(w) K dS_k + P^T dU
// with G = e^{A_i - A_j} (du_i . v_j) for j <= i and w = e^{A_L - A_j} (causal; the non-causal
// form has neither G nor P, and w = 1).
template <class T>
void chunk_grads(Chunk<T>& c, const LinearAttnParams& p, const T* s_q, const T* ds_k) {
  const int64_t n = c.n, cols = p.state_cols(), dk = p.dim_k;
  gemm(c.dq.data(), c.du.data(), s_q, n, cols, dk, Trans::none, Trans::transpose, T(0));
  scale_rows(c.dq.data(), c.ea.data(), n, dk);
  gemm(c.dk.data(), c.v.data(), ds_k, n, cols, dk, Trans::none, Trans::transpose, T(0));
  scale_rows(c.dk.data(), c.wl.data(), n, dk);
  gemm(c.dv.data(), c.k.data(), ds_k, n, dk, cols, Trans::none, Trans::none, T(0));
  scale_rows(c.dv.data(), c.wl.data(), n, cols);
  if (!p.causal) return;
  gemm(c.g.data(), c.du.data(), c.v.data(), n, cols, n, Trans::none, Trans::transpose, T(0));
  decay_mask(c.g.data(), c);
  gemm(c.dq.data(), c.g.data(), c.k.data(), n, n, dk, Trans::none, Trans::none, T(1));
  gemm(c.dk.data(), c.g.data(), c.q.data(), n, n, dk, Trans::transpose, Trans::none, T(1));
  gemm(c.dv.data(), c.p.data(), c.du.data(), n, n, cols, Trans::transpose, Trans::none, T(1));
}

// dS = e^{A_L} dS + sum_i e^{A_i} q_i du_i^T: the gradient of the state entering the chunk.
template <class T>
void retreat_state_grad(T* ds, Chunk<T>& c, const LinearAttnParams& p) {
  const int64_t n = c.n, cols = p.state_cols();
  std::copy_n(c.q.data(), n * p.dim_k, c.dq.data());  // c.dq as scratch: stored already, or unused
  scale_rows(c.dq.data(), c.ea.data(), n, p.dim_k);
  gemm(ds, c.dq.data(), c.du.data(), p.dim_k, n, cols, Trans::transpose, Trans::none, c.ea[n - 1]);
}

// da_t = sum over chunk rows i >= t of dA_i, dA_i = q_i.dq_i - k_i.dk_i (+ <S_out, dS_out> at
// the last row): the gradient of each token's log-decay.
template <class T>
void decay_grad(Chunk<T>& c, const LinearAttnParams& p, const T* s_out, const T* ds_out) {
  T acc = dot(s_out, ds_out, p.state_size());
  for (int64_t i = c.n - 1; i >= 0; --i) {
    acc += dot(&c.q[i * p.dim_k], &c.dq[i * p.dim_k], p.dim_k) - dot(&c.k[i * p.dim_k], &c.dk[i * p.dim_k], p.dim_k);
    c.da[i] = acc;
  }
}

// Where a task's gradient rows go: the output tensor itself when its head count is the state
// heads', else a [B, S, H, dim] scratch, reduced over the state heads sharing an input head.
template <class T>
struct GradRows {
  T* out;  // contiguous [B, S, heads, dim]
  int heads, dim;
  std::vector<T> scratch;
  T* base;
  int64_t stride[3];

  GradRows(void* out_, const LinearAttnParams& p, int heads_, int dim_)
      : out(static_cast<T*>(out_)), heads(heads_), dim(dim_) {
    if (heads != p.heads) scratch.assign(p.batch * p.seqlen * p.heads * dim, T(0));
    base = scratch.empty() ? out : scratch.data();
    stride[0] = p.seqlen * p.heads * dim;
    stride[1] = p.heads * dim;
    stride[2] = dim;
  }
  T* row(int64_t b, int64_t t, int h) { return base + b * stride[0] + t * stride[1] + h * stride[2]; }
  // out[b, t, g] = the sum of the scratch rows of state heads g * r .. g * r + r - 1.
  void reduce(const LinearAttnParams& p) {
    if (scratch.empty()) return;
    const int r = p.heads / heads;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < p.batch * p.seqlen; ++bt)
      for (int g = 0; g < heads; ++g) {
        T* o = out + (bt * heads + g) * dim;
        std::fill_n(o, dim, T(0));
        for (int j = 0; j < r; ++j) {
          const T* s = scratch.data() + (bt * p.heads + g * r + j) * dim;
          for (int d = 0; d < dim; ++d) o[d] += s[d];
        }
      }
  }
};

template <class T>
void copy_rows(GradRows<T>& dst, const Task<T>& task, const std::vector<T>& src, int64_t t0, int64_t n, int64_t ld) {
  for (int64_t i = 0; i < n; ++i) std::copy_n(&src[i * ld], dst.dim, dst.row(task.b, t0 + i, task.h));
}

template <class T>
void init_state(T* s, const T* s0, int64_t size) {
  if (s0)
    std::copy_n(s0, size, s);
  else
    std::fill_n(s, size, T(0));
}

template <class T>
void cpu_forward(const LinearAttnParams& p) {
  const int64_t size = p.state_size();
  T* final_state = static_cast<T*>(p.final_state);
  const T* state0 = static_cast<const T*>(p.state0);
#pragma omp parallel
  {
    Chunk<T> c(p);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < p.batch * p.heads; ++bh) {
      const Task<T> task{p, bh / p.heads, static_cast<int>(bh % p.heads)};
      T* s = final_state + task.state_offset();
      init_state(s, state0 ? state0 + task.state_offset() : nullptr, size);
      for (int64_t t0 = 0; t0 < p.seqlen; t0 += p.chunk) {
        load_chunk(c, task, t0);
        if (p.causal) {
          chunk_output(c, p, s);
          store_output(c, task);
        }
        advance_state(s, c, p);
      }
      if (p.causal) continue;
      for (int64_t t0 = 0; t0 < p.seqlen; t0 += p.chunk) {  // non-causal: every query reads the final state
        load_chunk(c, task, t0);
        chunk_output(c, p, s);
        store_output(c, task);
      }
    }
  }
}

template <class T>
void cpu_backward(const LinearAttnParams& p) {
  const int64_t size = p.state_size(), nchunks = (p.seqlen + p.chunk - 1) / p.chunk;
  const T* state0 = static_cast<const T*>(p.state0);
  const T* d_final = static_cast<const T*>(p.d_final_state);
  T* d_state0 = static_cast<T*>(p.d_state0);
  T* d_decay = static_cast<T*>(p.d_log_decay);
  GradRows<T> dq(p.dq, p, p.heads_q, p.dim_k), dk(p.dk, p, p.heads_k, p.dim_k), dv(p.dv, p, p.heads_v, p.dim_v);
  const bool per_head_decay_grad = p.d_log_decay && !p.decay_per_token;
  std::vector<T> d_decay_bh(per_head_decay_grad ? p.batch * p.heads : 0);  // summed over b below
#pragma omp parallel
  {
    Chunk<T> c(p);
    // Causal: the state entering each chunk, then the final state. Non-causal: [0] = the
    // whole-sequence state.
    std::vector<T> states((p.causal ? nchunks + 1 : 1) * size);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < p.batch * p.heads; ++bh) {
      const Task<T> task{p, bh / p.heads, static_cast<int>(bh % p.heads)};
      init_state(states.data(), state0 ? state0 + task.state_offset() : nullptr, size);
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        load_chunk(c, task, ci * p.chunk);
        T* s = states.data() + (p.causal ? ci : 0) * size;
        if (p.causal) std::copy_n(s, size, s + size);
        advance_state(p.causal ? s + size : s, c, p);
      }
      T* ds = d_state0 + task.state_offset();  // dS, ending as the gradient of state0
      init_state(ds, d_final ? d_final + task.state_offset() : nullptr, size);
      if (!p.causal) {  // the whole-sequence state gradient first: every key writes into it
        for (int64_t ci = 0; ci < nchunks; ++ci) {
          load_chunk(c, task, ci * p.chunk);
          chunk_output(c, p, states.data());
          output_grad(c, p);
          retreat_state_grad(ds, c, p);
        }
      }
      T d_decay_sum = 0;
      for (int64_t ci = nchunks - 1; ci >= 0; --ci) {
        load_chunk(c, task, ci * p.chunk);
        const T* s_q = states.data() + (p.causal ? ci : 0) * size;
        chunk_output(c, p, s_q);
        output_grad(c, p);
        chunk_grads(c, p, s_q, ds);
        if (p.d_log_decay) {
          decay_grad(c, p, s_q + size, ds);
          for (int64_t i = 0; i < c.n; ++i) {
            if (p.decay_per_token)
              d_decay[(task.b * p.seqlen + c.t0 + i) * p.heads + task.h] = c.da[i];
            else
              d_decay_sum += c.da[i];
          }
        }
        copy_rows(dq, task, c.dq, c.t0, c.n, p.dim_k);
        copy_rows(dk, task, c.dk, c.t0, c.n, p.dim_k);
        copy_rows(dv, task, c.dv, c.t0, c.n, p.state_cols());
        if (p.causal) retreat_state_grad(ds, c, p);
      }
      if (per_head_decay_grad) d_decay_bh[bh] = d_decay_sum;
    }
  }
  for (auto* g : {&dq, &dk, &dv}) g->reduce(p);
  if (per_head_decay_grad) {
    for (int h = 0; h < p.heads; ++h) {
      T sum = 0;
      for (int64_t b = 0; b < p.batch; ++b) sum += d_decay_bh[b * p.heads + h];
      d_decay[h] = sum;
    }
  }
}

}  // namespace

void linear_attn_forward_cpu(const LinearAttnParams& p) {
  LCTX_DISPATCH_CPU_FLOAT(p.dtype, "linear_attn_forward", [&] { cpu_forward<scalar_t>(p); });
}

void linear_attn_backward_cpu(const LinearAttnParams& p) {
  LCTX_DISPATCH_CPU_FLOAT(p.dtype, "linear_attn_backward", [&] { cpu_backward<scalar_t>(p); });
}

}  // namespace lctx::linear_attn
