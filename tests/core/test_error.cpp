#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"

using namespace lctx;

TEST(Error, MessageHasFileLineAndRank) {
  std::string msg;
  std::thread th([&] {
    set_error_rank(3);
    try {
      LCTX_CHECK(1 == 2, "value ", 7, " is not ", 8);
    } catch (const Error& e) {
      msg = e.what();
    }
  });
  th.join();
  EXPECT_NE(msg.find("tests/core/test_error.cpp:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[rank 3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("value 7 is not 8"), std::string::npos) << msg;
  try {
    LCTX_FAIL("no rank here");
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("[rank"), std::string::npos) << e.what();
  }
}
