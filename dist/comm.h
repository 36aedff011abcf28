// lctx::dist::Comm: the communicator interface that sequence-parallel code is written against,
// with three backends: SimComm (N ranks as N threads of one process, CPU or one GPU; tests),
// MpiComm (CPU tensors over MPI) and NcclComm (GPU tensors over NCCL, MPI bootstrap).
//
// Semantics shared by every backend (SimComm checks them; see the backends' headers):
//  - Typed: operations take Tensors (any dtype, contiguous) or std::span<T> (dtype from T).
//  - Point-to-point messages between one ordered pair of ranks match in posting order (NCCL
//    semantics, MPI with one tag); dtype and element count must agree.
//  - `sendrecv` posts a send and a receive as one grouped operation (ncclGroupStart/End,
//    MPI Isend+Irecv): the deadlock-free ring primitive. Every rank must post the same
//    sequence of operations.
//  - Requests: wait(s) makes the result visible to work queued on stream `s` afterwards. CPU
//    backends block the host; GPU backends make `s` wait on an event (the host never blocks).
//    Buffers must stay untouched until the request is waited (the request keeps them alive).
//  - Collectives are stream-ordered: work queued on `s` after the call sees the result (CPU:
//    the call returns when done). Sum reductions on SimComm and MpiComm reduce in rank order
//    in f64 (i64 for integers) and round once, so both give bitwise-identical results.
//  - Nothing hangs: an operation not complete after CommOptions::timeout_s ends with an
//    lctx::Error (SimComm, MpiComm with OnTimeout::throw_error) or a message and an abort of
//    the job (MpiComm/NcclComm default); a mismatch (different collectives, sizes, dtypes)
//    is an error, at the latest after the timeout.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "core/tensor.h"

namespace lctx::dist {

enum class ReduceOp { sum, max, min };
std::string_view reduce_op_name(ReduceOp op);

// What happens when an operation is not complete after the timeout.
enum class OnTimeout { throw_error, abort };

struct CommOptions {
  double timeout_s = default_timeout_s();  // per operation, from posting to completion
  OnTimeout on_timeout = OnTimeout::abort;  // SimComm always throws (and releases all ranks)
  // LCTX_COMM_TIMEOUT_S from the environment, else 300 s.
  static double default_timeout_s();
};

// A contiguous typed range of elements: what the backends move. Built by Comm from a Tensor
// or a span; never a raw byte count.
struct Buffer {
  void* data = nullptr;
  int64_t count = 0;  // elements
  DType dtype = DType::f32;
  Device device;
  std::string str() const;  // "f32[1024]@cpu"
};

// Backend half of a Request.
class RequestImpl {
 public:
  virtual ~RequestImpl() = default;
  virtual void wait(Stream s) = 0;
  virtual bool test() = 0;
};

// Handle of an asynchronous send/recv/sendrecv. Move-only; a default Request is complete.
class Request {
 public:
  Request() = default;
  explicit Request(std::unique_ptr<RequestImpl> impl) : impl_(std::move(impl)) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&&) noexcept;
  ~Request();

  // Makes the operation's result visible to work queued on `s` after this call (CPU: blocks
  // the host). Throws (or aborts, per CommOptions) after the timeout. Idempotent.
  void wait(Stream s = {});
  // True once the operation has completed (never blocks).
  bool test();
  bool pending() const { return impl_ != nullptr; }

 private:
  std::unique_ptr<RequestImpl> impl_;
};

class Comm {
 public:
  virtual ~Comm() = default;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual std::string_view backend() const = 0;  // "sim", "mpi", "nccl"
  const CommOptions& options() const { return opts_; }

  // ---- point-to-point (tensors must be contiguous) ----
  Request isend(const Tensor& t, int dst, Stream s = {}) { return isend_impl(sent(buffer("isend", t)), dst, s); }
  Request irecv(const Tensor& t, int src, Stream s = {}) { return irecv_impl(buffer("irecv", t), src, s); }
  // Send `send` to send_to and receive `recv` from recv_from as one grouped operation.
  Request sendrecv(const Tensor& send, int send_to, const Tensor& recv, int recv_from, Stream s = {}) {
    return sendrecv_impl(sent(buffer("sendrecv", send)), send_to, buffer("sendrecv", recv), recv_from, s);
  }
  template <class T>
  Request isend(std::span<const T> data, int dst) { return isend_impl(sent(buffer(data)), dst, {}); }
  template <class T>
  Request irecv(std::span<T> data, int src) { return irecv_impl(buffer(data), src, {}); }
  template <class T>
  Request sendrecv(std::span<const T> send, int send_to, std::span<T> recv, int recv_from) {
    return sendrecv_impl(sent(buffer(send)), send_to, buffer(recv), recv_from, {});
  }

  // ---- collectives (every rank, same order) ----
  // A communicator of one rank runs its tensor collectives in place on the device (a copy at
  // most): no host staging, no backend call.
  void all_reduce(const Tensor& t, ReduceOp op, Stream s = {}) {
    const Buffer b = collective(buffer("all_reduce", t));
    if (size_ > 1) all_reduce_impl(b, op, s);
  }
  // `out` holds size() blocks of in.numel() elements; block i comes from rank i (e.g. out is
  // [size, *in.shape] or [size * n, ...]).
  void all_gather(const Tensor& in, const Tensor& out, Stream s = {});
  // `in` holds size() blocks of out.numel() elements; rank i receives the reduction of
  // block i over all ranks.
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, Stream s = {});
  // `in` and `out` hold size() equal blocks: block j of `in` goes to rank j, block i of
  // `out` comes from rank i.
  void all_to_all(const Tensor& in, const Tensor& out, Stream s = {});
  void broadcast(const Tensor& t, int root, Stream s = {}) {
    check_peer("broadcast", root);
    const Buffer b = rooted(buffer("broadcast", t), root);
    if (size_ > 1) broadcast_impl(b, root, s);
  }
  virtual void barrier() = 0;

  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op) { all_reduce_impl(collective(buffer(data)), op, {}); }
  template <class T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    all_gather_impl(collective(buffer(in)), blocks("all_gather", buffer(out), buffer(in), size_), {});
  }
  template <class T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    reduce_scatter_impl(collective(blocks("reduce_scatter", buffer(in), buffer(out), size_)), buffer(out), op, {});
  }
  template <class T>
  void all_to_all(std::span<const T> in, std::span<T> out) { all_to_all_impl(collective(buffer(in)), buffer(out), {}); }
  template <class T>
  void broadcast(std::span<T> data, int root) { broadcast_impl(rooted(buffer(data), root), root, {}); }

  // Collective: ranks with the same color form a new communicator, ranked by (key, rank).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;

  // Bytes this rank has handed to this communicator since it was made or reset_traffic():
  // the payloads of its sends (isend, the send half of sendrecv) and its inputs to
  // collectives (a broadcast counts at its root; a communicator of one rank moves nothing, so
  // its collectives count nothing). What tests use to check how much a parallel algorithm
  // communicates (a sliding window only with the ranks it reaches), and lctx-train's sp_bytes.
  struct Traffic {
    int64_t sent_bytes = 0;
    int64_t collective_bytes = 0;
  };
  const Traffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_ = {}; }

 protected:
  Comm(int rank, int size, CommOptions opts) : rank_(rank), size_(size), opts_(opts) {}

  virtual Request isend_impl(const Buffer& b, int dst, Stream s) = 0;
  virtual Request irecv_impl(const Buffer& b, int src, Stream s) = 0;
  virtual Request sendrecv_impl(const Buffer& send, int send_to, const Buffer& recv, int recv_from, Stream s) = 0;
  virtual void all_reduce_impl(const Buffer& b, ReduceOp op, Stream s) = 0;
  virtual void all_gather_impl(const Buffer& in, const Buffer& out, Stream s) = 0;
  virtual void reduce_scatter_impl(const Buffer& in, const Buffer& out, ReduceOp op, Stream s) = 0;
  virtual void all_to_all_impl(const Buffer& in, const Buffer& out, Stream s) = 0;
  virtual void broadcast_impl(const Buffer& b, int root, Stream s) = 0;

  void check_peer(const char* op, int peer) const;
  static Buffer buffer(const char* op, const Tensor& t);
  template <class T>
  static Buffer buffer(std::span<T> s) {
    return {const_cast<std::remove_const_t<T>*>(s.data()), static_cast<int64_t>(s.size()),
            dtype_v<std::remove_const_t<T>>, Device::cpu()};
  }
  // Checks that `whole` holds n blocks of `part` (same dtype and device) and returns it.
  static Buffer blocks(const char* op, const Buffer& whole, const Buffer& part, int n);
  static Buffer blocks(const char* op, const Tensor& whole, const Tensor& part, int n) {
    return blocks(op, buffer(op, whole), buffer(op, part), n);
  }

  int rank_ = 0, size_ = 1;
  CommOptions opts_;

 private:
  static int64_t bytes(const Buffer& b) { return b.count * static_cast<int64_t>(dtype_size(b.dtype)); }
  const Buffer& sent(const Buffer& b) {
    traffic_.sent_bytes += bytes(b);
    return b;
  }
  const Buffer& collective(const Buffer& b) {
    if (size_ > 1) traffic_.collective_bytes += bytes(b);
    return b;
  }
  const Buffer& rooted(const Buffer& b, int root) { return rank_ == root ? collective(b) : b; }
  Traffic traffic_;
};

// Reduces `n` blocks of `count` elements of `dtype` (host memory) into `out`, in block order,
// in f64 (i64 for integers) with one rounding at the end. Shared by SimComm and MpiComm.
void reduce_host(void* out, std::span<const void* const> blocks, int64_t count, DType dtype, ReduceOp op);

}  // namespace lctx::dist
