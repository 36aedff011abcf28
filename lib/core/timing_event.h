// TimingEvent: a marker in a stream's work that spans of that work are timed between (a CUDA
// event on a GPU; a host timestamp on the CPU, whose ops finish before they return). Recording
// never blocks the host; only elapsed_ms waits, for the later marker to be reached, so a
// sequence of markers times the phases of a step with one wait at its end.
#pragma once
#include <chrono>

#include "core/device.h"

namespace lctx {

class TimingEvent {
 public:
  explicit TimingEvent(Device device);
  ~TimingEvent();
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;

  void record(Stream s = {});
  // Milliseconds from `from`'s marker to this one's (both recorded, same device).
  double elapsed_ms(const TimingEvent& from) const;

 private:
  Device device_;
  void* event_ = nullptr;  // cudaEvent_t on a GPU
  std::chrono::steady_clock::time_point host_;
};

}  // namespace lctx
