#include "core/tensor.h"

#include <cstring>
#include <numeric>
#include <sstream>

#include "core/cuda_check.h"
#include "core/strided.h"

namespace lctx {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  ptr_ = allocate(bytes, device);
}
Storage::~Storage() { deallocate(ptr_, device_); }

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

}  // namespace

StridedLayout detail::layout_of(const Tensor& t) {
  LCTX_CHECK(t.dim() <= StridedLayout::kMaxDims, "tensor ", t.str(), " has more than ",
             StridedLayout::kMaxDims, " dims");
  StridedLayout l;
  for (int i = 0; i < t.dim(); ++i) {
    const int64_t n = t.shape()[i], st = t.strides()[i];
    if (n == 1) continue;  // moves nothing
    if (l.ndim > 0 && l.stride[l.ndim - 1] == st * n) {  // the previous dim steps over this one whole
      l.shape[l.ndim - 1] *= n;
      l.stride[l.ndim - 1] = st;
    } else {
      l.shape[l.ndim] = n;
      l.stride[l.ndim] = st;
      ++l.ndim;
    }
  }
  return l;
}

namespace {

template <class D, class S>
void cpu_copy_typed(D* dst, const StridedLayout& dl, const S* src, const StridedLayout& sl, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dst[dl.offset(i)] = convert<D>(src[sl.offset(i)]);
}

template <class D>
void cpu_copy_from(D* dst, const StridedLayout& dl, const Tensor& src, int64_t n) {
  const StridedLayout sl = detail::layout_of(src);
  switch (src.dtype()) {
    case DType::f64: cpu_copy_typed(dst, dl, static_cast<const double*>(src.raw()), sl, n); return;
    case DType::f32: cpu_copy_typed(dst, dl, static_cast<const float*>(src.raw()), sl, n); return;
    case DType::bf16: cpu_copy_typed(dst, dl, static_cast<const bf16*>(src.raw()), sl, n); return;
    case DType::f16: cpu_copy_typed(dst, dl, static_cast<const f16*>(src.raw()), sl, n); return;
    case DType::i32: cpu_copy_typed(dst, dl, static_cast<const int32_t*>(src.raw()), sl, n); return;
    case DType::i64: cpu_copy_typed(dst, dl, static_cast<const int64_t*>(src.raw()), sl, n); return;
  }
}

void cpu_copy(Tensor& dst, const Tensor& src) {
  const StridedLayout dl = detail::layout_of(dst);
  const int64_t n = dst.numel();
  switch (dst.dtype()) {
    case DType::f64: cpu_copy_from(static_cast<double*>(dst.raw()), dl, src, n); return;
    case DType::f32: cpu_copy_from(static_cast<float*>(dst.raw()), dl, src, n); return;
    case DType::bf16: cpu_copy_from(static_cast<bf16*>(dst.raw()), dl, src, n); return;
    case DType::f16: cpu_copy_from(static_cast<f16*>(dst.raw()), dl, src, n); return;
    case DType::i32: cpu_copy_from(static_cast<int32_t*>(dst.raw()), dl, src, n); return;
    case DType::i64: cpu_copy_from(static_cast<int64_t*>(dst.raw()), dl, src, n); return;
  }
}

template <class T>
void cpu_fill_typed(Tensor& t, double value) {
  const StridedLayout l = detail::layout_of(t);
  T* p = static_cast<T*>(t.raw());
  const T v = convert<T>(value);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) p[l.offset(i)] = v;
}

template <class T>
void cpu_add_typed(Tensor& dst, const Tensor& src) {
  const StridedLayout dl = detail::layout_of(dst), sl = detail::layout_of(src);
  T* d = static_cast<T*>(dst.raw());
  const T* x = static_cast<const T*>(src.raw());
  const int64_t n = dst.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) d[dl.offset(i)] += x[sl.offset(i)];
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) LCTX_CHECK(d >= 0, "Tensor::empty: negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device, Stream s) {
  return full(shape, 0.0, dtype, device, s);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device, Stream s) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value, s);
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, std::span<const double> values, DType dtype) {
  LCTX_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "Tensor::from_vector: ",
             values.size(), " values for shape ", shape_str(shape), " (", shape_numel(shape), " elements)");
  Tensor src;
  src.shape_ = shape;
  src.strides_ = contiguous_strides(shape);
  src.dtype_ = DType::f64;
  src.storage_ = std::make_shared<Storage>(values.size() * sizeof(double), Device::cpu());
  if (!values.empty()) std::memcpy(src.storage_->data(), values.data(), values.size() * sizeof(double));
  return dtype == DType::f64 ? src : src.to(dtype);
}

int64_t Tensor::size(int d) const {
  const int nd = dim();
  if (d < 0) d += nd;
  LCTX_CHECK(d >= 0 && d < nd, "Tensor::size: dim ", d, " out of range for ", str());
  return shape_[d];
}

int64_t Tensor::numel() const { return shape_numel(shape_); }

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_) || numel() <= 1; }

std::string Tensor::str() const {
  if (!defined()) return "<undefined tensor>";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + "@" + device().str();
}

void* Tensor::raw() const {
  LCTX_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_);
}

Tensor Tensor::view(const Shape& shape) const {
  LCTX_CHECK(is_contiguous(), "Tensor::view of non-contiguous tensor ", str());
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      LCTX_CHECK(infer < 0, "Tensor::view: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    LCTX_CHECK(known > 0 && numel() % known == 0, "Tensor::view: cannot view ", str(), " as ", shape_str(shape));
    s[infer] = numel() / known;
  }
  LCTX_CHECK(shape_numel(s) == numel(), "Tensor::view: cannot view ", str(), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end, int64_t step) const {
  const int nd = dim();
  if (d < 0) d += nd;
  LCTX_CHECK(d >= 0 && d < nd, "Tensor::slice: dim ", d, " out of range for ", str());
  LCTX_CHECK(0 <= start && start <= end && end <= shape_[d], "Tensor::slice: range [", start, ", ", end,
             ") out of bounds for dim ", d, " of ", str());
  LCTX_CHECK(step >= 1, "Tensor::slice: step ", step, " must be >= 1");
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start * strides_[d]);
  t.shape_[d] = (end - start + step - 1) / step;
  t.strides_[d] *= step;
  return t;
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  LCTX_CHECK(defined(), "Tensor::as_strided of an undefined tensor");
  LCTX_CHECK(shape.size() == strides.size(), "Tensor::as_strided: shape ", shape_str(shape), " and strides ",
             shape_str(strides), " differ in rank");
  int64_t last = static_cast<int64_t>(offset_) + offset;  // the furthest element reached
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    LCTX_CHECK(shape[i] >= 0 && strides[i] >= 0, "Tensor::as_strided: negative size or stride in shape ",
               shape_str(shape), ", strides ", shape_str(strides));
    empty = empty || shape[i] == 0;
    if (shape[i] > 0) last += (shape[i] - 1) * strides[i];
  }
  const int64_t elems = static_cast<int64_t>(storage_->bytes() / dtype_size(dtype_));
  LCTX_CHECK(static_cast<int64_t>(offset_) + offset >= 0 && (empty || last < elems), "Tensor::as_strided: shape ",
             shape_str(shape), ", strides ", shape_str(strides), " from offset ", offset, " of ", str(),
             " reaches past its storage of ", elems, " elements");
  Tensor t = *this;
  t.offset_ = static_cast<size_t>(static_cast<int64_t>(offset_) + offset);
  t.shape_ = shape;
  t.strides_ = strides;
  return t;
}

void Tensor::copy_from(const Tensor& src, Stream s) {
  LCTX_CHECK(src.shape_ == shape_, "copy_from: shape mismatch, destination ", str(), " source ", src.str());
  if (numel() == 0) return;
  const Device dd = device(), sd = src.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    cpu_copy(*this, src);
    return;
  }
#ifdef LCTX_HAVE_CUDA
  if (dd.is_cuda() && sd.is_cuda() && dd == sd) {
    detail::cuda_copy(*this, src, s);
    return;
  }
  // Across devices: make the source contiguous in the destination dtype on its own device,
  // move the bytes, then scatter into the destination's layout.
  Tensor packed = src.to(dtype_, s).contiguous(s);
  Tensor landing = is_contiguous() ? *this : Tensor::empty(shape_, dtype_, dd);
  LCTX_CUDA_CHECK(cudaMemcpyAsync(landing.raw(), packed.raw(), nbytes(), cudaMemcpyDefault, cuda_stream(s)));
  if (dd.is_cpu()) LCTX_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(s)));
  if (!is_contiguous()) copy_from(landing, s);
  if (sd.is_cuda() && dd.is_cuda()) LCTX_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(s)));  // packed lifetime
#else
  (void)s;
  LCTX_FAIL("copy_from ", src.str(), " to ", str(), ": lctx was built without CUDA");
#endif
}

Tensor Tensor::contiguous(Stream s) const {
  if (is_contiguous()) return *this;
  return clone(s);
}

Tensor Tensor::clone(Stream s) const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this, s);
  return t;
}

Tensor Tensor::to(Device d, Stream s) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this, s);
  return t;
}

Tensor Tensor::to(DType dt, Stream s) const {
  if (dt == dtype_) return *this;
  Tensor t = empty(shape_, dt, device());
  t.copy_from(*this, s);
  return t;
}

void Tensor::fill(double value, Stream s) {
  if (numel() == 0) return;
  if (device().is_cpu()) {
    switch (dtype_) {
      case DType::f64: cpu_fill_typed<double>(*this, value); return;
      case DType::f32: cpu_fill_typed<float>(*this, value); return;
      case DType::bf16: cpu_fill_typed<bf16>(*this, value); return;
      case DType::f16: cpu_fill_typed<f16>(*this, value); return;
      case DType::i32: cpu_fill_typed<int32_t>(*this, value); return;
      case DType::i64: cpu_fill_typed<int64_t>(*this, value); return;
    }
  }
#ifdef LCTX_HAVE_CUDA
  detail::cuda_fill(*this, value, s);
#else
  (void)s;
#endif
}

void Tensor::add_from(const Tensor& src, Stream s) {
  LCTX_CHECK(src.shape_ == shape_, "add_from: shape mismatch, destination ", str(), " source ", src.str());
  LCTX_CHECK(device() == src.device(), "add_from: ", str(), " += ", src.str(), ": tensors on different devices");
  const bool half = dtype_ == DType::bf16 || dtype_ == DType::f16;
  LCTX_CHECK(dtype_ == DType::f32 || dtype_ == DType::f64 || (half && device().is_cuda()), "add_from: destination ",
             str(), " must be f32 or f64 (or, on CUDA, bf16/f16)");
  const bool narrow = dtype_ == DType::f32 && (src.dtype() == DType::bf16 || src.dtype() == DType::f16);
  const bool into_half = half && src.dtype() == DType::f32;
  LCTX_CHECK(src.dtype() == dtype_ || ((narrow || into_half) && device().is_cuda()), "add_from: ", str(), " += ",
             src.str(), ": the source must be ", dtype_name(dtype_),
             !device().is_cuda() ? "" : dtype_ == DType::f32 ? ", bf16 or f16" : half ? " or f32" : "");
  if (numel() == 0) return;
  if (device().is_cpu()) {
    if (dtype_ == DType::f64) cpu_add_typed<double>(*this, src);
    else cpu_add_typed<float>(*this, src);
    return;
  }
#ifdef LCTX_HAVE_CUDA
  detail::cuda_add(*this, *this, src, s);
#else
  (void)s;
#endif
}

std::vector<double> Tensor::to_vector() const {
  Tensor host = Tensor::empty(shape_, DType::f64, Device::cpu());
  host.copy_from(*this);
  const double* p = host.data<double>();
  return std::vector<double>(p, p + host.numel());
}

double Tensor::item() const {
  LCTX_CHECK(numel() == 1, "item() needs a single-element tensor, got ", str());
  return to_vector()[0];
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  LCTX_CHECK(t.defined(), op, ": ", name, " is undefined, expected shape ", shape_str(expected));
  LCTX_CHECK(t.shape() == expected, op, ": ", name, " has shape ", shape_str(t.shape()), ", expected ",
             shape_str(expected));
}

void check_bshd(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  check_shape(op, name, t, expected);
  LCTX_CHECK(t.strides()[3] == 1 || t.size(3) <= 1, op, ": ", name, " ", t.str(),
             " needs a contiguous last (head_dim) dimension");
}

void bshd_strides(int64_t (&dst)[3], const Tensor& t) {
  for (int i = 0; i < 3; ++i) dst[i] = t.strides()[i];
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType expected) {
  LCTX_CHECK(t.dtype() == expected, op, ": ", name, " ", t.str(), " must have dtype ", dtype_name(expected));
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!first) first = t;
    LCTX_CHECK(t->device() == first->device(), op, ": tensors on different devices: ", first->str(), " and ",
               t->str());
  }
}

void check_contiguous(const char* op, const char* name, const Tensor& t) {
  LCTX_CHECK(t.is_contiguous(), op, ": ", name, " ", t.str(), " must be contiguous");
}

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& like) {
  check_shape(op, name, t, like.shape());
  check_dtype(op, name, t, like.dtype());
  check_contiguous(op, name, t);
}

DType dtype_from_name(std::string_view name) {
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64})
    if (dtype_name(t) == name) return t;
  LCTX_FAIL("unknown dtype '", name, "', expected one of f64, f32, bf16, f16, i32, i64");
}

}  // namespace lctx
