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

  // Memory offset of row-major element i. layout_of coalesces dims, so a contiguous tensor
  // has one dim (no division at all); I = uint32_t gives 32-bit division, several times
  // cheaper on a GPU, whenever the element count fits (offset_in).
  template <class I = int64_t>
  LCTX_HD int64_t offset(I i) const {
    if (ndim == 1) return static_cast<int64_t>(i) * stride[0];
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const I n = static_cast<I>(shape[d]);
      off += static_cast<int64_t>(i % n) * stride[d];
      i /= n;
    }
    return off;
  }
  // offset() with 32-bit index math when every index of an n-element loop fits.
  LCTX_HD int64_t offset_in(int64_t i, int64_t n) const {
    return n <= 0xffffffffLL ? offset<uint32_t>(static_cast<uint32_t>(i)) : offset(i);
  }
};

namespace detail {
// The layout of t with size-1 dims dropped and dims that are contiguous with the next one
// merged (same element order, fewer divisions per offset). Throws beyond kMaxDims dims.
StridedLayout layout_of(const Tensor& t);
// CUDA halves of Tensor::copy_from / fill / add_from (tensor.cu); all tensors on one device.
void cuda_copy(Tensor& dst, const Tensor& src, Stream s);
void cuda_fill(Tensor& t, double value, Stream s);
// out = a + b elementwise over tensors of one shape: a laid out like out (out itself for
// add_from and accumulated residual gradients, or another tensor: ops::residual_forward), b in
// any layout; a has out's dtype, b too or bf16/f16 added into f32.
void cuda_add(Tensor& out, const Tensor& a, const Tensor& b, Stream s);
}  // namespace detail

}  // namespace lctx
