// StepProfile: where a training step's time goes (logging.profile, on rank 0). Model and trainer mark
// phase boundaries on the compute stream (TimingEvent: CUDA events, host clocks on the CPU);
// finish() waits for the step's last marker once and sums the spans per phase, so profiling
// adds one host wait per step and nothing inside it. Ring/Ulysses communication joins the
// compute stream, so each phase's span is its wall time as the stream saw it.
//   forward            embedding and every layer's forward but the mixer
//   mixer_forward      each layer's mixer forward (softmax: q/k/v and output projections and the
//                      attention with its sequence-parallel exchanges)
//   head_loss          final norm, head, cross-entropy and their backward
//   backward           every layer's backward (and recompute) but the mixer's backward
//   mixer_backward     each layer's mixer backward
//   grad_sync          gradient all-reduce over the world and the loss sums
//   optimizer          gradient norm/clip and AdamW
#pragma once
#include <array>
#include <memory>
#include <string_view>
#include <vector>

#include "core/timing_event.h"

namespace lctx::train {

enum class Phase { forward, mixer_forward, head_loss, backward, mixer_backward, grad_sync, optimizer };
inline constexpr int kPhases = 7;
std::string_view phase_name(Phase p);

class StepProfile {
 public:
  explicit StepProfile(Device device) : device_(device) {}

  void start(Phase p);  // a step begins, in phase p
  void enter(Phase p);  // from now on time counts to p (no-op outside start..finish)
  // Milliseconds per phase (indexed by Phase) since start; waits for the last marker.
  std::array<double, kPhases> finish();

 private:
  TimingEvent& next_marker();
  Device device_;
  std::vector<std::unique_ptr<TimingEvent>> pool_;  // reused from step to step
  std::vector<Phase> phases_;                       // phases_[i]: the phase marker i opens
  bool active_ = false;
};

}  // namespace lctx::train
