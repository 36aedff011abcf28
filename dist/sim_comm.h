// SimComm: N ranks as N threads of one process, with the semantics and ordering of the real
// communicators, so distributed code runs and is tested on one machine. Tensors live on the
// CPU (copies with memcpy) or on one GPU (cudaMemcpyAsync between the ranks' buffers, fenced
// with CUDA events; the posting stream is never blocked on the host for point-to-point).
//
// It is stricter than the real backends: every point-to-point pair and every collective is
// checked (dtype, count, which collective), and any mismatch or a wait that is not satisfied
// within CommOptions::timeout_s fails the whole simulated world: the rank that noticed throws
// an lctx::Error saying what did not match, and every other rank throws CommAborted at its
// next (or current) communicator call, so run_simulated always returns.
//
// On a GPU, all simulated ranks must queue their work on one shared stream: the caching
// allocator is process-wide and not stream-aware, so a temporary freed by one rank could be
// handed at once to another rank's stream while the first rank's kernels still use it. With
// one stream every reuse is ordered after the earlier work (the copies between ranks run on
// the communicator's own streams, fenced with events).
#pragma once
#include <functional>
#include <memory>

#include "dist/comm.h"

namespace lctx::dist {

// Thrown on the ranks that were released because another rank failed.
class CommAborted : public Error {
 public:
  using Error::Error;
};

struct SimWorld;  // shared state of the simulated ranks (sim_comm.cpp)

class SimComm final : public Comm {
 public:
  SimComm(std::shared_ptr<SimWorld> world, int rank);
  ~SimComm() override;

  std::string_view backend() const override { return "sim"; }
  void barrier() override;
  std::unique_ptr<Comm> split(int color, int key) override;

  // Marks the world failed with `message` (releases every rank). Used by run_simulated.
  void fail(const std::string& message);

 protected:
  Request isend_impl(const Buffer& b, int dst, Stream s) override;
  Request irecv_impl(const Buffer& b, int src, Stream s) override;
  Request sendrecv_impl(const Buffer& send, int send_to, const Buffer& recv, int recv_from, Stream s) override;
  void all_reduce_impl(const Buffer& b, ReduceOp op, Stream s) override;
  void all_gather_impl(const Buffer& in, const Buffer& out, Stream s) override;
  void reduce_scatter_impl(const Buffer& in, const Buffer& out, ReduceOp op, Stream s) override;
  void all_to_all_impl(const Buffer& in, const Buffer& out, Stream s) override;
  void broadcast_impl(const Buffer& b, int root, Stream s) override;

 private:
  void* copy_stream(const Buffer& b);  // this rank's stream for the GPU copies it performs

  std::shared_ptr<SimWorld> world_;
  void* copy_stream_ = nullptr;  // cudaStream_t, created on the device of the first GPU buffer
  int copy_device_ = -1;
};

// Runs fn(comm) on n threads (ranks 0..n-1; lctx::error_rank() is set per thread; the thread
// uses GPU 0 when CUDA is available), joins them all and rethrows the first error, preferring
// the original failure over the CommAborted of the released ranks.
void run_simulated(int n, const std::function<void(Comm&)>& fn, CommOptions opts = {});

}  // namespace lctx::dist
