// LCTX_HDF5_CHECK: the HDF5 C API returns negative ids/status on failure (and prints its own
// error stack, which we silence). The macro turns that into an lctx::Error naming the call and
// the file, and a small RAII handle closes ids on every path (including exceptions).
#pragma once
#include <hdf5.h>

#include <mutex>
#include <utility>

#include "core/error.h"

#define LCTX_HDF5_CHECK(expr, ...)                                                            \
  ([&] {                                                                                      \
    auto lctx_h5_r_ = (expr);                                                                 \
    if (lctx_h5_r_ < 0) LCTX_FAIL("HDF5: ", #expr, " failed: ", ::lctx::detail::cat(__VA_ARGS__)); \
    return lctx_h5_r_;                                                                        \
  }())

namespace lctx::train {

// Owns an HDF5 id; `close` is H5Fclose / H5Dclose / ... matching the id's kind.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer close) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    reset();
    id_ = std::exchange(o.id_, -1);
    close_ = o.close_;
    return *this;
  }
  ~H5Id() { reset(); }
  operator hid_t() const { return id_; }
  // Closes now, reporting a failure (H5Fclose flushes: its error matters).
  void close() {
    if (id_ >= 0) {
      const hid_t id = std::exchange(id_, -1);
      LCTX_HDF5_CHECK(close_(id), "closing an HDF5 object");
    }
  }

 private:
  void reset() {
    if (id_ >= 0) close_(std::exchange(id_, -1));
  }
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// For the scope of one HDF5 call sequence: HDF5's own error printing off, and its (per-thread)
// error stack cleared on exit so failed calls leave nothing behind (checked with LSan).
class Hdf5Quiet {
 public:
  Hdf5Quiet();
  ~Hdf5Quiet();
  Hdf5Quiet(const Hdf5Quiet&) = delete;
  Hdf5Quiet& operator=(const Hdf5Quiet&) = delete;
};
// The serial HDF5 library is not thread-safe and simulated ranks are threads: every HDF5 call
// in the trainer holds this lock.
std::mutex& hdf5_mutex();

// Scalar attributes written the one way lctx writes them (64-bit little-endian numbers, a
// fixed-length null-padded string); failures are lctx::Errors naming the attribute.
void write_attr_i64(hid_t obj, const char* name, int64_t v);
void write_attr_f64(hid_t obj, const char* name, double v);
void write_attr_str(hid_t obj, const char* name, const std::string& v);

}  // namespace lctx::train
