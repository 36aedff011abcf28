// PhaseLog: where the time of a layer's call goes, without a profiler. With LCTX_PHASES=1 in
// the environment, mark(name) records a TimingEvent on the call's device and stream (it never
// blocks), and the destructor waits once and prints one line to stderr,
//   lctx phases <label>: <name> <ms>, <name> <ms>, ...
// each the time since the previous mark (the first since construction) on the device's
// timeline, so time the GPU spends waiting for the host is in the phase that made it wait.
// Without LCTX_PHASES nothing is recorded or printed.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/timing_event.h"

namespace lctx {

class PhaseLog {
 public:
  PhaseLog(std::string label, Device device, Stream stream = {});
  ~PhaseLog();
  PhaseLog(const PhaseLog&) = delete;
  PhaseLog& operator=(const PhaseLog&) = delete;

  void mark(const char* name);
  // Whether LCTX_PHASES is set to something other than "" or "0" (read on each call).
  static bool enabled();

 private:
  std::string label_;
  Device device_;
  Stream stream_;
  bool on_;
  std::vector<std::pair<std::string, std::unique_ptr<TimingEvent>>> marks_;  // [0]: the start
};

}  // namespace lctx
