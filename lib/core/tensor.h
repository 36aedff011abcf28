// lctx::Tensor: a typed, strided view of reference-counted memory on the CPU or a GPU.
// Views (view, slice, transpose-free) share storage; copies are explicit (copy_from, to,
// contiguous). There is no autograd: layers save what their backward needs and pass
// gradients as plain tensors (llm.c style).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"

namespace lctx {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);  // product of the dims (1 for a scalar shape)

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu(), Stream s = {});
  static Tensor full(const Shape& shape, double value, DType dtype, Device device = Device::cpu(),
                     Stream s = {});
  // CPU tensor holding `values` converted to `dtype`; values.size() must equal numel(shape).
  static Tensor from_vector(const Shape& shape, std::span<const double> values, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  bool is_contiguous() const;
  std::string str() const;  // "bf16[2,1024,16,128]@cuda:0", used in error messages

  void* raw() const;
  template <class T>
  T* data() const {
    LCTX_CHECK(dtype_ == dtype_v<T>, "tensor ", str(), " accessed as ", dtype_name(dtype_v<T>));
    return static_cast<T*>(raw());
  }

  // Same memory, new shape (contiguous tensors only; one dim may be -1).
  Tensor view(const Shape& shape) const;
  // Elements start, start + step, ... below end along `dim` (step >= 1); shares memory.
  Tensor slice(int dim, int64_t start, int64_t end, int64_t step = 1) const;
  // Same memory seen with any shape and element strides (>= 0), starting `offset` elements
  // past this view's start; every element must lie in the storage (checked). For permuted or
  // interleaved views that copy_from / add_from / fill then traverse.
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset = 0) const;

  // Copies src into this tensor (same shape; any dtypes, strides; CPU<->GPU staged if needed).
  void copy_from(const Tensor& src, Stream s = {});
  Tensor contiguous(Stream s = {}) const;  // this tensor itself when already contiguous
  Tensor clone(Stream s = {}) const;
  Tensor to(Device device, Stream s = {}) const;
  Tensor to(DType dtype, Stream s = {}) const;
  void fill(double value, Stream s = {});
  void zero(Stream s = {}) { fill(0.0, s); }
  // this += src: this f32 or f64 (accumulators), src of the same shape and device, in this
  // dtype or, on CUDA, bf16/f16 (gradients added into fp32); on CUDA also bf16/f16 += f32 or
  // the same dtype (summed in fp32, rounded once); any strides on both sides.
  void add_from(const Tensor& src, Stream s = {});

  // All elements as doubles in row-major order (copies to the host and synchronizes).
  std::vector<double> to_vector() const;
  double item() const;  // single-element tensors

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;  // in elements
  DType dtype_ = DType::f32;
};

// Throws an lctx::Error naming `op`, the tensor and the expectation when the check fails.
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected);
void check_dtype(const char* op, const char* name, const Tensor& t, DType expected);
void check_same_device(const char* op, std::initializer_list<const Tensor*> ts);
void check_contiguous(const char* op, const char* name, const Tensor& t);
// `t` has shape `expected` ([B, S, H, D]) with a contiguous last dimension: attention-style
// operands that may be strided views (sequence slices, head groups); bshd_strides gives the
// (b, s, h) strides in elements for a kernel's params.
void check_bshd(const char* op, const char* name, const Tensor& t, const Shape& expected);
void bshd_strides(int64_t (&dst)[3], const Tensor& t);
// `t` has the shape and dtype of `like` and is contiguous (outputs and gradients of an op).
void check_like(const char* op, const char* name, const Tensor& t, const Tensor& like);

}  // namespace lctx
