#include "core/phase_log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace lctx {

bool PhaseLog::enabled() {
  const char* v = std::getenv("LCTX_PHASES");
  return v && *v && std::strcmp(v, "0") != 0;
}

PhaseLog::PhaseLog(std::string label, Device device, Stream stream)
    : label_(std::move(label)), device_(device), stream_(stream), on_(enabled()) {
  mark("start");
}

void PhaseLog::mark(const char* name) {
  if (!on_) return;
  marks_.emplace_back(name, std::make_unique<TimingEvent>(device_));
  marks_.back().second->record(stream_);
}

PhaseLog::~PhaseLog() {
  if (marks_.size() < 2) return;
  try {
    std::string line = "lctx phases " + label_ + ":";
    for (size_t i = 1; i < marks_.size(); ++i) {
      char ms[32];
      std::snprintf(ms, sizeof ms, " %.3f", marks_[i].second->elapsed_ms(*marks_[i - 1].second));
      line += (i > 1 ? ", " : " ") + marks_[i].first + ms;
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  } catch (const std::exception& e) {  // a destructor must not throw
    std::fprintf(stderr, "lctx phases %s: %s\n", label_.c_str(), e.what());
  }
}

}  // namespace lctx
