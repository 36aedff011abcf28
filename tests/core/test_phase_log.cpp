// PhaseLog prints one line of phase times when LCTX_PHASES asks for it, and nothing otherwise.
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>
#include <string>

#include "core/phase_log.h"

using namespace lctx;

namespace {

std::string phases_of(const char* env) {
  if (env) setenv("LCTX_PHASES", env, 1);
  else unsetenv("LCTX_PHASES");
  testing::internal::CaptureStderr();
  {
    PhaseLog log("unit test", Device::cpu());
    log.mark("first");
    log.mark("second");
  }
  unsetenv("LCTX_PHASES");
  return testing::internal::GetCapturedStderr();
}

TEST(PhaseLog, PrintsOneLineWhenAsked) {
  const std::string out = phases_of("1");
  EXPECT_TRUE(std::regex_match(out, std::regex("lctx phases unit test: first [0-9.]+, second [0-9.]+\n"))) << out;
  EXPECT_FALSE(PhaseLog::enabled());
}

TEST(PhaseLog, SilentOtherwise) {
  EXPECT_EQ(phases_of(nullptr), "");
  EXPECT_EQ(phases_of("0"), "");
  EXPECT_EQ(phases_of(""), "");
}

}  // namespace
