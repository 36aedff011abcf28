#include "core/timing_event.h"

#include "core/cuda_check.h"
#include "core/error.h"

namespace lctx {

TimingEvent::TimingEvent(Device device) : device_(device) {
#ifdef LCTX_HAVE_CUDA
  if (device_.is_cuda()) {
    cudaEvent_t e = nullptr;
    LCTX_CUDA_CHECK(cudaEventCreate(&e));
    event_ = e;
  }
#endif
}

TimingEvent::~TimingEvent() {
#ifdef LCTX_HAVE_CUDA
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

void TimingEvent::record(Stream s) {
#ifdef LCTX_HAVE_CUDA
  if (event_) {
    LCTX_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), cuda_stream(s)));
    return;
  }
#endif
  (void)s;
  host_ = std::chrono::steady_clock::now();
}

double TimingEvent::elapsed_ms(const TimingEvent& from) const {
  LCTX_CHECK(from.device_ == device_, "TimingEvent::elapsed_ms: markers on ", from.device_.str(), " and ",
             device_.str());
#ifdef LCTX_HAVE_CUDA
  if (event_) {
    LCTX_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
    float ms = 0;
    LCTX_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(from.event_), static_cast<cudaEvent_t>(event_)));
    return ms;
  }
#endif
  return std::chrono::duration<double, std::milli>(host_ - from.host_).count();
}

}  // namespace lctx
