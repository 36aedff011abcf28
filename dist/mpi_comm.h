// MpiComm: CPU tensors over MPI, one process per rank. Point-to-point uses MPI_Isend/Irecv
// (sendrecv posts both before waiting); collectives use the non-blocking MPI-3 calls, and
// every wait polls MPI_Test against a deadline, so nothing hangs: after CommOptions::timeout_s
// the job is aborted with a message naming the operation (OnTimeout::abort, the default) or
// an lctx::Error is thrown (OnTimeout::throw_error; pending receives are cancelled).
// Errors come back as codes (MPI_ERRORS_RETURN) and become lctx::Error via LCTX_MPI_CHECK.
// Reductions move the data with MPI_Ialltoall/MPI_Iallgather and reduce locally in rank
// order (reduce_host), which is deterministic and bitwise equal to SimComm.
#pragma once
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C API only (the MPI C++ bindings need another library)
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "dist/comm.h"

#define LCTX_MPI_CHECK(expr)                                                          \
  do {                                                                                \
    const int lctx_mpi_rc_ = (expr);                                                  \
    if (lctx_mpi_rc_ != MPI_SUCCESS)                                                  \
      LCTX_FAIL("MPI error in ", #expr, ": ", ::lctx::dist::mpi_error_string(lctx_mpi_rc_)); \
  } while (0)

namespace lctx::dist {

std::string mpi_error_string(int code);

// True when this process was started by mpirun/srun with more than one process (read from
// the environment; MPI itself is not initialized by this call).
bool launched_with_mpi();
// Initializes MPI once (MPI_THREAD_MULTIPLE requested, finalized at exit), sets the error
// rank of this thread to the world rank and returns it.
int mpi_init();

class MpiComm final : public Comm {
 public:
  // A communicator over MPI_COMM_WORLD (initializes MPI when needed).
  static std::unique_ptr<MpiComm> world(CommOptions opts = {});
  // Takes ownership of `comm` (freed in the destructor).
  MpiComm(MPI_Comm comm, CommOptions opts);
  ~MpiComm() override;

  std::string_view backend() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }
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
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace lctx::dist
