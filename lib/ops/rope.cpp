#include "ops/rope.h"

#include <cmath>
#include <vector>

#include "ops/cuda_ops.h"

namespace lctx::ops {

namespace {

template <class T>
void cpu_rope(T* out, const T* x, const int32_t* pos, bool per_batch, int64_t b, int64_t s, int64_t h, int64_t d,
              double theta, int sign) {
  const int64_t half = d / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::exp(-2.0 * static_cast<double>(i) / static_cast<double>(d) * std::log(theta));
#pragma omp parallel for schedule(static) if (b * s * h * d > 65536)
  for (int64_t bs = 0; bs < b * s; ++bs) {
    const double p = pos[per_batch ? bs : bs % s];
    for (int64_t i = 0; i < half; ++i) {
      const double a = p * inv_freq[i];
      const double c = std::cos(a), sn = sign * std::sin(a);
      for (int64_t hh = 0; hh < h; ++hh) {
        const int64_t o = (bs * h + hh) * d + i;
        const double x1 = x[o], x2 = x[o + half];
        out[o] = static_cast<T>(x1 * c - x2 * sn);
        out[o + half] = static_cast<T>(x1 * sn + x2 * c);
      }
    }
  }
}

void rope(const char* op, Tensor& out, const Tensor& x, const Tensor& positions, double theta, int sign,
          Stream st) {
  const char* xname = sign > 0 ? "x" : "dout";
  const char* oname = sign > 0 ? "out" : "dx";
  detail::check_float_input(op, xname, x);
  LCTX_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, op, ": ", xname, " ", x.str(), " must be [B, S, H, D] with even D");
  check_same_device(op, {&out, &x, &positions});
  check_shape(op, oname, out, x.shape());
  check_dtype(op, oname, out, x.dtype());
  check_contiguous(op, oname, out);
  LCTX_CHECK(positions.defined(), op, ": positions is undefined");
  check_dtype(op, "positions", positions, DType::i32);
  check_contiguous(op, "positions", positions);
  const int64_t b = x.size(0), s = x.size(1), h = x.size(2), d = x.size(3);
  LCTX_CHECK(positions.shape() == Shape{s} || positions.shape() == (Shape{b, s}), op, ": positions ",
             positions.str(), " must be [", s, "] or [", b, ",", s, "]");
  LCTX_CHECK(theta > 0, op, ": theta must be positive, got ", theta);
  if (x.device().is_cuda()) return LCTX_OPS_CUDA(op, x, cuda::rope(out, x, positions, theta, sign, st));
  LCTX_DISPATCH_CPU_FLOAT(x.dtype(), op, [&] {
    cpu_rope(out.data<scalar_t>(), x.data<scalar_t>(), positions.data<int32_t>(), positions.dim() == 2, b, s, h, d,
             theta, sign);
  });
}

}  // namespace

void rope_forward(Tensor& out, const Tensor& x, const Tensor& positions, double theta, Stream s) {
  rope("rope_forward", out, x, positions, theta, +1, s);
}

void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions, double theta, Stream s) {
  rope("rope_backward", dx, dout, positions, theta, -1, s);
}

}  // namespace lctx::ops
