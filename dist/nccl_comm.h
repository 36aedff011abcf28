// NcclComm: GPU tensors over NCCL, one process (MPI rank) per GPU. Bootstrapped with MPI: rank
// 0 creates the ncclUniqueId and MPI_Bcasts it. The communicator runs on its own CUDA stream:
// each operation first makes that stream wait (cudaStreamWaitEvent) for the caller's stream
// `s` as of the call, and requests / collectives hand back an event the caller's stream waits
// on, so the host never blocks and compute overlaps communication. sendrecv and all_to_all
// are grouped (ncclGroupStart/End).
//
// A watchdog thread polls every in-flight operation (cudaEventQuery) and the communicator
// (ncclCommGetAsyncError); an NCCL error, or an operation not complete within
// CommOptions::timeout_s, prints a message naming the operation and rank, then calls
// ncclCommAbort and MPI_Abort: a mismatched program ends, it never hangs. (NcclComm always
// aborts: a timed-out NCCL communicator cannot be reused.) Compiled only with LCTX_HAVE_CUDA.
#pragma once
#ifdef LCTX_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include "dist/comm.h"
#include "dist/mpi_comm.h"

#define LCTX_NCCL_CHECK(expr)                                                              \
  do {                                                                                     \
    const ncclResult_t lctx_nccl_rc_ = (expr);                                             \
    if (lctx_nccl_rc_ != ncclSuccess)                                                      \
      LCTX_FAIL("NCCL error in ", #expr, ": ", ncclGetErrorString(lctx_nccl_rc_), " (",    \
                ncclGetLastError(nullptr), ")");                                           \
  } while (0)

namespace lctx::dist {

class NcclComm final : public Comm {
 public:
  // Collective over `boot`: every rank passes the GPU it uses.
  NcclComm(MpiComm& boot, int device, CommOptions opts = {});
  ~NcclComm() override;

  std::string_view backend() const override { return "nccl"; }
  int device() const { return device_; }
  Stream stream() const { return {stream_}; }  // the communicator's own stream
  ncclComm_t handle() const { return comm_; }
  // Host-side: returns when every rank has reached the barrier (watchdog-bounded).
  void barrier() override;
  std::unique_ptr<Comm> split(int color, int key) override;

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
  struct Watchdog;
  NcclComm(ncclComm_t comm, int device, CommOptions opts);
  void init_common();
  void check_buffer(const char* op, const Buffer& b) const;
  void begin(Stream s);                                  // comm stream waits for s
  std::shared_ptr<void> end(const std::string& what);  // done event (cudaEvent_t inside), watched

  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace lctx::dist
#endif  // LCTX_HAVE_CUDA
