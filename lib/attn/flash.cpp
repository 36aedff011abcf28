// Flash attention's public API (flash.h): the attention backend policy (option, environment,
// cuDNN with a reported fallback to lctx's kernels) and the dispatch of a validated call
// (flash_params.cpp) to the CPU reference, cuDNN or lctx's CUDA kernels.
#include "attn/flash.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "attn/flash_cudnn.h"
#include "attn/flash_params.h"

namespace lctx::attn {

std::string_view attn_backend_name(AttnBackend b) {
  switch (b) {
    case AttnBackend::automatic: return "auto";
    case AttnBackend::cudnn: return "cudnn";
    case AttnBackend::lctx: return "lctx";
  }
  return "?";
}

namespace {

// The backend named `name`, or nullopt.
std::optional<AttnBackend> find_backend(std::string_view name) {
  for (AttnBackend b : {AttnBackend::automatic, AttnBackend::cudnn, AttnBackend::lctx})
    if (name == attn_backend_name(b)) return b;
  return std::nullopt;
}

// The backend a call asks for: its option, or LCTX_ATTN_BACKEND in place of `automatic`.
AttnBackend requested_backend(const FlashOptions& opts) {
  if (opts.backend != AttnBackend::automatic) return opts.backend;
  const char* env = std::getenv("LCTX_ATTN_BACKEND");
  if (!env || !*env) return AttnBackend::automatic;
  if (const auto b = find_backend(env)) return *b;
  LCTX_FAIL("environment variable LCTX_ATTN_BACKEND='", env, "' is not one of auto, cudnn, lctx");
}

#ifdef LCTX_HAVE_CUDA
// Prints each distinct line once per process (rank 0 or a non-distributed run).
void report_once(const std::string& line) {
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mu);
  if (seen.insert(line).second && error_rank() <= 0) std::fprintf(stderr, "lctx: %s\n", line.c_str());
}

// The backend policy of a CUDA call: `attempt` tries cuDNN (false, with the reason, when it
// cannot run the call); the automatic choice leaves calls that lctx's kernels run faster to
// them without trying. Returns false when lctx's kernels must run the call instead.
template <class F>
bool ran_on_cudnn(const char* op, const FlashOptions& opts, const FlashParams& p, const Tensor& q, const Tensor& k,
                  F&& attempt) {
  const AttnBackend want = requested_backend(opts);
  if (want == AttnBackend::lctx) return false;
  if (p.has_sparse()) {  // cuDNN computes none of the sparse patterns (plain windows run as bands)
    LCTX_CHECK(want != AttnBackend::cudnn, op, ": attention backend cudnn cannot run a block mask (sparse "
               "pattern); q ", q.str(), ". Use backend auto or lctx");
    report_once(std::string(op) + ": lctx kernels for block masks (cuDNN has no sparse patterns)");
    return false;
  }
  if (want == AttnBackend::automatic) {
    const std::string slower = detail::cudnn_slower(p, opts.documents.get());
    if (!slower.empty()) {
      report_once(std::string(op) + ": lctx kernels for calls they run faster than cuDNN (" + slower + ")");
      return false;
    }
  }
  std::string why;
  if (attempt(&why)) {
    report_once(std::string(op) + ": cuDNN " + detail::cudnn_version_string() + " fused attention");
    return true;
  }
  LCTX_CHECK(want != AttnBackend::cudnn, op, ": attention backend cudnn cannot run this call (", why, "); q ",
             q.str(), ", k ", k.str(), ". Use backend auto or lctx");
  report_once(std::string(op) + ": lctx kernels for calls cuDNN cannot run (" + why + ")");
  return false;
}
#endif

}  // namespace

AttnBackend parse_attn_backend(std::string_view name) {
  if (const auto b = find_backend(name)) return *b;
  LCTX_FAIL("attention backend '", name, "' is not one of auto, cudnn, lctx");
}

FlashOutput flash_forward(const Tensor& q, const Tensor& k, const Tensor& v, const FlashOptions& opts, Stream s) {
  const char* op = "flash_forward";
  FlashOutput out;
  const FlashParams p = flash_forward_params(op, q, k, v, opts, &out);
  if (out.o.numel() == 0) return out;
  (void)s;
  if (q.device().is_cpu()) {
    LCTX_CHECK(requested_backend(opts) != AttnBackend::cudnn, op, ": attention backend cudnn needs CUDA tensors, q ",
               q.str());
    flash_forward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    const bool cudnn = ran_on_cudnn(op, opts, p, q, k, [&](std::string* why) {
      // cuDNN writes o in the input dtype: an f32 output goes through a converted copy.
      const Tensor o_io = out.o.dtype() == q.dtype() ? out.o : Tensor::empty(q.shape(), q.dtype(), q.device());
      FlashParams pc = p;
      flash_set_o(pc, o_io);
      *why = detail::cudnn_unsupported(pc, opts.documents.get());
      if (!why->empty() || !detail::flash_forward_cudnn(pc, opts.documents.get(), s, why)) return false;
      if (o_io.raw() != out.o.raw()) out.o.copy_from(o_io, s);
      return true;
    });
    if (!cudnn) flash_forward_cuda(p, s);
#endif
  }
  return out;
}

FlashGrads flash_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                          const Tensor& dout, const FlashOptions& opts, GradMode mode, FlashGrads into, Stream s) {
  const char* op = "flash_backward";
  FlashGrads g = into;
  const FlashParams p = flash_backward_params(op, q, k, v, o, lse, dout, opts, mode, &g);
  const Device dev = q.device();
  if (g.dq.numel() == 0 && g.dk.numel() == 0) return g;
  (void)s;
  if (dev.is_cpu()) {
    LCTX_CHECK(requested_backend(opts) != AttnBackend::cudnn, op, ": attention backend cudnn needs CUDA tensors, q ",
               q.str());
    flash_backward_cpu(p);
  } else {
#ifdef LCTX_HAVE_CUDA
    const bool cudnn = ran_on_cudnn(op, opts, p, q, k, [&](std::string* why) {
      // cuDNN reads o and writes dq/dk/dv in the input dtype: f32 o is converted, f32 or
      // accumulated gradients go through temporaries.
      FlashParams pc = p;
      const Tensor o_io = o.dtype() == q.dtype() ? o : o.to(q.dtype(), s);
      flash_set_o(pc, o_io);
      const bool direct = mode == GradMode::overwrite && g.dq.dtype() == q.dtype();
      const FlashGrads t = direct ? g
                                  : FlashGrads{Tensor::empty(q.shape(), q.dtype(), dev),
                                               Tensor::empty(k.shape(), q.dtype(), dev),
                                               Tensor::empty(k.shape(), q.dtype(), dev)};
      flash_set_grads(pc, t);
      *why = detail::cudnn_unsupported(pc, opts.documents.get());
      if (!why->empty() || !detail::flash_backward_cudnn(pc, opts.documents.get(), s, why)) return false;
      if (direct) return true;
      for (auto [dst, src] : {std::pair{&g.dq, &t.dq}, std::pair{&g.dk, &t.dk}, std::pair{&g.dv, &t.dv}}) {
        if (mode == GradMode::accumulate) dst->add_from(*src, s);
        else dst->copy_from(*src, s);
      }
      return true;
    });
    if (!cudnn) flash_backward_cuda(p, s);
#endif
  }
  return g;
}

}  // namespace lctx::attn
