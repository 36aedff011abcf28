#include "trainers/memory_estimate.h"

#include <cstdio>

#include "core/error.h"
#include "trainers/model.h"

namespace lctx::train {

namespace {

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

MemoryEstimate estimate_memory(const Config& c, Device device) {
  const auto& m = c.model;
  const double V = static_cast<double>(m.vocab_size), D = static_cast<double>(m.dim),
               F = static_cast<double>(m.ffn_hidden()), L = static_cast<double>(m.n_layers);
  const double params = V * D * (m.tied_embeddings ? 1 : 2) + L * (2 * D + 3 * D * F) + D;
  const double compute_bytes = static_cast<double>(dtype_size(compute_dtype_for(c, device)));
  MemoryEstimate e;
  e.params = params;
  e.state_bytes = params * (16 + (compute_bytes < 4 ? compute_bytes : 0));
  const double tokens = static_cast<double>(c.data.batch_size / c.parallel.dp) *
                        static_cast<double>(c.data.seq_len / c.parallel.sp);
  e.activation_bytes = tokens * compute_bytes * (D * (L + 6) + V);
  e.data_bytes = 5.0 * static_cast<double>(c.data.seq_len) + 20.0 * tokens;
  return e;
}

void check_memory(const Config& c, Device device, int ranks, Ranks kind) {
  const MemoryEstimate e = estimate_memory(c, device);
  if (kind == Ranks::simulated) {
    const double host = static_cast<double>(device_memory_bytes(Device::cpu()));
    const double staged = 4.0 * e.params * ranks * ranks;
    LCTX_CHECK(host <= 0 || staged <= host, "config: parallel.simulate = ", ranks, " ranks stage every rank's gradients ",
               "on the host in each all-reduce: at least ", gib(staged), " (parallel.simulate^2 x the parameters of ",
               "model.vocab_size, model.dim, model.ffn_dim, model.n_layers) but the host has ", gib(host),
               " available; simulate fewer ranks or run them as processes (mpirun)");
  }
  const double have = static_cast<double>(device_memory_bytes(device));
  if (have <= 0) return;
  const double need = e.total() * ranks;
  LCTX_CHECK(need <= have, "config: this run needs at least ", gib(need), " on ", device.str(), " (", ranks,
             " rank(s) of at least ", gib(e.total()), ") but ", gib(have), " is available: parameters and optimizer ",
             "state ", gib(e.state_bytes), " (model.vocab_size, model.dim, model.ffn_dim, model.n_layers), activations ",
             gib(e.activation_bytes), " (data.batch_size / parallel.dp x data.seq_len / parallel.sp tokens x model.dim x ",
             "model.n_layers), data ", gib(e.data_bytes), " (data.seq_len); ranks sharing the device: parallel.simulate");
}

}  // namespace lctx::train
