// lctx::Error and the check macros every module uses.
// Messages carry file:line and the rank of the calling thread (set by dist/), so a failure
// in a 64-rank job names where and on which rank it happened.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace lctx {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Rank shown in error messages; -1 = not distributed. Thread-local so that simulated
// ranks (one thread each) report their own rank.
void set_error_rank(int rank);
int error_rank();

namespace detail {
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace lctx

// Throws lctx::Error("file:line [rank r]: <message>") when cond is false.
#define LCTX_CHECK(cond, ...)                                                    \
  do {                                                                           \
    if (!(cond)) ::lctx::detail::throw_error(__FILE__, __LINE__,                \
                                             ::lctx::detail::cat(__VA_ARGS__)); \
  } while (0)

#define LCTX_FAIL(...) ::lctx::detail::throw_error(__FILE__, __LINE__, ::lctx::detail::cat(__VA_ARGS__))
