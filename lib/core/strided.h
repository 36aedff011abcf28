// StridedLayout: shape + strides of a tensor in a plain struct, usable on host and device,
// mapping a row-major element index to a memory offset. Shared by the CPU and CUDA copy/fill.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LCTX_HD __host__ __device__
#else
#define LCTX_HD
#endif

namespace lctx {

class Tensor;
struct Stream;

struct StridedLayout {
  static constexpr int kMaxDims = 8;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  LCTX_HD int64_t offset(int64_t i) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      off += (i % shape[d]) * stride[d];
      i /= shape[d];
    }
    return off;
  }
};

namespace detail {
StridedLayout layout_of(const Tensor& t);  // throws for more than kMaxDims dims
// CUDA halves of Tensor::copy_from / Tensor::fill (tensor.cu); both tensors on one device.
void cuda_copy(Tensor& dst, const Tensor& src, Stream s);
void cuda_fill(Tensor& t, double value, Stream s);
}  // namespace detail

}  // namespace lctx
