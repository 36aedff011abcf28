#include "trainers/step_profile.h"

namespace lctx::train {

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::forward: return "forward";
    case Phase::mixer_forward: return "mixer_forward";
    case Phase::head_loss: return "head_loss";
    case Phase::backward: return "backward";
    case Phase::mixer_backward: return "mixer_backward";
    case Phase::grad_sync: return "grad_sync";
    case Phase::optimizer: return "optimizer";
  }
  return "?";
}

TimingEvent& StepProfile::next_marker() {
  if (phases_.size() == pool_.size()) pool_.push_back(std::make_unique<TimingEvent>(device_));
  return *pool_[phases_.size()];
}

void StepProfile::start(Phase p) {
  phases_.clear();
  active_ = true;
  enter(p);
}

void StepProfile::enter(Phase p) {
  if (!active_ || (!phases_.empty() && phases_.back() == p)) return;
  next_marker().record();
  phases_.push_back(p);
}

std::array<double, kPhases> StepProfile::finish() {
  std::array<double, kPhases> ms{};
  if (!active_) return ms;
  next_marker().record();  // the end of the last phase
  for (size_t i = 0; i < phases_.size(); ++i) ms[static_cast<int>(phases_[i])] += pool_[i + 1]->elapsed_ms(*pool_[i]);
  active_ = false;
  return ms;
}

}  // namespace lctx::train
