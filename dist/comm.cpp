#include "dist/comm.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

namespace lctx::dist {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

double CommOptions::default_timeout_s() {
  if (const char* env = std::getenv("LCTX_COMM_TIMEOUT_S")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    LCTX_CHECK(end != env && *end == '\0' && v > 0, "LCTX_COMM_TIMEOUT_S='", env, "' must be a positive number of seconds");
    return v;
  }
  return 300.0;
}

std::string Buffer::str() const { return detail::cat(dtype_name(dtype), "[", count, "]@", device.str()); }

Request& Request::operator=(Request&& o) noexcept {
  impl_ = std::move(o.impl_);
  return *this;
}

Request::~Request() = default;

void Request::wait(Stream s) {
  if (!impl_) return;
  impl_->wait(s);
  impl_.reset();
}

bool Request::test() {
  if (!impl_) return true;
  if (!impl_->test()) return false;
  impl_->wait({});  // complete: releases the buffers (never blocks here)
  impl_.reset();
  return true;
}

void Comm::check_peer(const char* op, int peer) const {
  LCTX_CHECK(peer >= 0 && peer < size_, op, ": peer rank ", peer, " out of range for a communicator of size ", size_);
}

Buffer Comm::buffer(const char* op, const Tensor& t) {
  LCTX_CHECK(t.defined(), op, ": tensor is undefined");
  check_contiguous(op, "tensor", t);
  return {t.numel() ? t.raw() : nullptr, t.numel(), t.dtype(), t.device()};
}

Buffer Comm::blocks(const char* op, const Buffer& whole, const Buffer& part, int n) {
  LCTX_CHECK(whole.dtype == part.dtype, op, ": dtypes differ: ", whole.str(), " and ", part.str());
  LCTX_CHECK(whole.device == part.device, op, ": devices differ: ", whole.str(), " and ", part.str());
  LCTX_CHECK(whole.count == part.count * n, op, ": ", whole.str(), " must hold ", n, " blocks of ", part.str());
  return whole;
}

namespace {

// in's elements into out (same count; both contiguous, one device): one rank's collective.
void copy_whole(const Tensor& in, const Tensor& out, Stream s) {
  if (in.raw() == out.raw() || in.numel() == 0) return;
  Tensor dst = out.view({in.numel()});
  dst.copy_from(in.view({in.numel()}), s);
}

}  // namespace

void Comm::all_gather(const Tensor& in, const Tensor& out, Stream s) {
  const Buffer bi = collective(buffer("all_gather", in)), bo = blocks("all_gather", out, in, size_);
  if (size_ == 1)
    copy_whole(in, out, s);
  else
    all_gather_impl(bi, bo, s);
}

void Comm::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, Stream s) {
  const Buffer bi = collective(blocks("reduce_scatter", in, out, size_)), bo = buffer("reduce_scatter", out);
  if (size_ == 1)
    copy_whole(in, out, s);
  else
    reduce_scatter_impl(bi, bo, op, s);
}

void Comm::all_to_all(const Tensor& in, const Tensor& out, Stream s) {
  const Buffer bi = buffer("all_to_all", in), bo = buffer("all_to_all", out);
  LCTX_CHECK(bi.count % size_ == 0, "all_to_all: ", in.str(), " does not split into ", size_, " equal blocks");
  blocks("all_to_all", bo, Buffer{bi.data, bi.count / size_, bi.dtype, bi.device}, size_);
  if (size_ == 1)
    copy_whole(in, out, s);
  else
    all_to_all_impl(collective(bi), bo, s);
}

namespace {

template <class T, class Acc>
void reduce_typed(void* out, std::span<const void* const> blocks, int64_t count, ReduceOp op) {
  T* o = static_cast<T*>(out);
  for (int64_t i = 0; i < count; ++i) {
    Acc acc = convert<Acc>(static_cast<const T*>(blocks[0])[i]);
    for (size_t b = 1; b < blocks.size(); ++b) {
      const Acc v = convert<Acc>(static_cast<const T*>(blocks[b])[i]);
      switch (op) {
        case ReduceOp::sum: acc += v; break;
        case ReduceOp::max: acc = std::max(acc, v); break;
        case ReduceOp::min: acc = std::min(acc, v); break;
      }
    }
    o[i] = convert<T>(acc);
  }
}

}  // namespace

void reduce_host(void* out, std::span<const void* const> blocks, int64_t count, DType dtype, ReduceOp op) {
  LCTX_CHECK(!blocks.empty(), "reduce_host: no blocks");
  switch (dtype) {
    case DType::f64: return reduce_typed<double, double>(out, blocks, count, op);
    case DType::f32: return reduce_typed<float, double>(out, blocks, count, op);
    case DType::bf16: return reduce_typed<bf16, double>(out, blocks, count, op);
    case DType::f16: return reduce_typed<f16, double>(out, blocks, count, op);
    case DType::i32: return reduce_typed<int32_t, int64_t>(out, blocks, count, op);
    case DType::i64: return reduce_typed<int64_t, int64_t>(out, blocks, count, op);
  }
}

}  // namespace lctx::dist
