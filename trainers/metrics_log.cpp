#include "trainers/metrics_log.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <regex>
#include <vector>

#include "core/error.h"

namespace lctx::train {

namespace {

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

}  // namespace

void MetricsLog::open(const std::string& path, int64_t keep_up_to_step) {
  std::vector<std::string> keep;
  if (keep_up_to_step > 0) {
    std::ifstream in(path);
    static const std::regex step_re(R"("step": (\d+))");
    for (std::string line; std::getline(in, line);) {
      std::smatch m;
      if (std::regex_search(line, m, step_re) && std::stoll(m[1]) <= keep_up_to_step) keep.push_back(line);
    }
  }
  out_.open(path, std::ios::trunc);
  LCTX_CHECK(out_.good(), "cannot write ", path);
  for (const auto& l : keep) out_ << l << "\n";
  out_.flush();
}

void MetricsLog::train(const StepRecord& r, const TrainRecordInfo& in) {
  out_ << "{\"split\": \"train\", \"step\": " << r.step << ", \"loss\": " << json_num(r.loss)
       << ", \"accuracy\": " << json_num(r.accuracy) << ", \"lr\": " << json_num(r.lr)
       << ", \"grad_norm\": " << json_num(r.grad_norm) << ", \"tokens_per_s\": " << json_num(in.tokens_per_s)
       << ", \"mfu\": " << json_num(in.mfu) << ", \"tokens\": " << in.tokens
       << ", \"skipped\": " << (r.skipped ? "true" : "false") << ", \"skipped_total\": " << in.skipped_total
       << ", \"mem_peak_bytes\": " << in.memory.peak_bytes << ", \"sp_bytes\": " << json_num(in.sp_bytes);
  const bool profiled = in.profile_ms && in.profile_steps > 0;
  if (profiled) {  // milliseconds per step, averaged since the last record
    out_ << ", \"profile_ms\": {";
    for (int i = 0; i < kPhases; ++i)
      out_ << (i ? ", \"" : "\"") << phase_name(static_cast<Phase>(i))
           << "\": " << json_num((*in.profile_ms)[i] / static_cast<double>(in.profile_steps));
    out_ << "}";
  }
  out_ << "}\n";
  out_.flush();
  if (!print_) return;
  char mfu_buf[32] = "";
  if (in.mfu > 0) std::snprintf(mfu_buf, sizeof mfu_buf, " | MFU %.3f", in.mfu);
  char sp_buf[48] = "";
  if (in.sp_bytes > 0) std::snprintf(sp_buf, sizeof sp_buf, " | sp %s/step", human_bytes(in.sp_bytes).c_str());
  char buf[368];
  std::snprintf(buf, sizeof buf, "step %6lld/%lld | loss %.4f | acc %5.1f%% | lr %.2e | gnorm %.3f | %s tok/s%s | ETA %s | mem %s%s%s",
                static_cast<long long>(r.step), static_cast<long long>(total_steps_), r.loss, 100.0 * r.accuracy, r.lr,
                r.grad_norm, human_rate(in.tokens_per_s).c_str(), mfu_buf, human_time(in.eta_s).c_str(),
                human_bytes(static_cast<double>(in.memory.peak_bytes)).c_str(), sp_buf,
                r.skipped ? " | SKIPPED (non-finite grad)" : "");
  std::cout << buf << std::endl;
  if (!profiled) return;
  const auto& ms_sum = *in.profile_ms;
  double total = 0;
  for (double v : ms_sum) total += v;
  std::string line = "  profile per step";
  for (int i = 0; i < kPhases; ++i) {
    const double ms = ms_sum[i] / static_cast<double>(in.profile_steps);
    std::snprintf(buf, sizeof buf, " | %s %.*f %s (%.0f%%)", std::string(phase_name(static_cast<Phase>(i))).c_str(),
                  ms >= 1000 ? 2 : 1, ms >= 1000 ? ms / 1000 : ms, ms >= 1000 ? "s" : "ms",
                  total > 0 ? 100 * ms_sum[i] / total : 0.0);
    line += buf;
  }
  std::cout << line << std::endl;
}

void MetricsLog::eval(const StepRecord& r, int64_t tokens, int64_t answers) {
  out_ << "{\"split\": \"eval\", \"step\": " << r.step << ", \"loss\": " << json_num(r.loss)
       << ", \"accuracy\": " << json_num(r.accuracy) << ", \"tokens\": " << tokens << "}\n";
  out_.flush();
  if (!print_) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, "eval @ step %lld | loss %.4f | acc %5.1f%% (%lld answer tokens)",
                static_cast<long long>(r.step), r.loss, 100.0 * r.accuracy, static_cast<long long>(answers));
  std::cout << buf << std::endl;
}

void MetricsLog::flush() {
  if (out_.is_open()) out_.flush();
}

}  // namespace lctx::train
