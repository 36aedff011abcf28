// Helpers of the dist tests: run a function on n ranks either with SimComm (threads) or, when
// the executable was started by mpirun with n processes, with MpiComm over MPI_COMM_WORLD.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "dist/comm.h"
#include "dist/mpi_comm.h"
#include "dist/sim_comm.h"

namespace lctx::test {

inline dist::CommOptions test_comm_options() {
  dist::CommOptions o;
  o.timeout_s = 120;
  return o;
}

// The MPI world when launched by mpirun with more than one process, else nullptr.
inline dist::Comm* mpi_world() {
  static std::unique_ptr<dist::MpiComm> world =
      dist::launched_with_mpi() ? dist::MpiComm::world(test_comm_options()) : nullptr;
  return world.get();
}

// Runs fn on n ranks: MpiComm when under mpirun with exactly n processes, SimComm threads when
// not under mpirun; returns false (nothing run) under mpirun with another process count.
inline bool run_ranks(int n, const std::function<void(dist::Comm&)>& fn) {
  if (dist::Comm* w = mpi_world()) {
    if (w->size() != n) return false;
    fn(*w);
    return true;
  }
  dist::run_simulated(n, fn, test_comm_options());
  return true;
}

#define LCTX_RUN_RANKS_OR_SKIP(n, ...)                                                           \
  do {                                                                                          \
    if (!::lctx::test::run_ranks((n), __VA_ARGS__)) GTEST_SKIP() << "needs " << (n) << " MPI processes"; \
  } while (0)

// Sim-only tests (deliberate mismatches, threads) skip under mpirun.
#define LCTX_SIM_ONLY()                                                              \
  do {                                                                               \
    if (::lctx::test::mpi_world()) GTEST_SKIP() << "SimComm-only test under mpirun"; \
  } while (0)

}  // namespace lctx::test
