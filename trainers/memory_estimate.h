// A lower bound of the memory a training run needs, checked before anything is allocated, so
// that a config too large for the machine ends with an error naming the keys that drive the
// size (instead of std::bad_alloc or a CUDA out-of-memory deep inside a step). Counted per
// rank: parameters, gradients and AdamW state of the layers every kind has (embedding, MLPs,
// norms, head), the activations every layer keeps (its input) plus the logits, and the data
// of one sample; ranks that share a device (simulated ranks, MPI ranks of one node on the CPU)
// add up. Simulated ranks also stage every rank's gradients on the host in each all-reduce
// (SimComm keeps the real reduction order), so their host memory grows with the square of
// parallel.simulate.
#pragma once
#include <cstdint>
#include <string>

#include "core/device.h"
#include "trainers/config.h"

namespace lctx::train {

struct MemoryEstimate {
  double state_bytes = 0;       // parameters, gradients, AdamW moments (+ bf16 compute copy)
  double activation_bytes = 0;  // kept layer inputs, final norm, gradients of the stream, logits
  double data_bytes = 0;        // one generated sample and this rank's batch
  double params = 0;            // parameters counted (a lower bound: embedding, MLPs, norms, head)
  double total() const { return state_bytes + activation_bytes + data_bytes; }
};

// Per rank, for a rank computing on `device`.
MemoryEstimate estimate_memory(const Config& c, Device device);

enum class Ranks { real, simulated };

// Throws lctx::Error when `ranks` ranks sharing `device` need more than it has (names the keys
// that drive each part). Does nothing when the device's memory is unknown.
void check_memory(const Config& c, Device device, int ranks, Ranks kind);

}  // namespace lctx::train
