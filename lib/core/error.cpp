#include "core/error.h"

namespace lctx {

namespace {
thread_local int t_rank = -1;
}

void set_error_rank(int rank) { t_rank = rank; }
int error_rank() { return t_rank; }

namespace detail {
void throw_error(const char* file, int line, const std::string& msg) {
  std::string where = file;
#ifdef LCTX_SOURCE_DIR
  const std::string root = LCTX_SOURCE_DIR;
  if (where.rfind(root, 0) == 0) where = where.substr(root.size());
#endif
  std::ostringstream os;
  os << where << ":" << line;
  if (t_rank >= 0) os << " [rank " << t_rank << "]";
  os << ": " << msg;
  throw Error(os.str());
}
}  // namespace detail

}  // namespace lctx
