// bench_memory: issue 20's sparse memory kinds on one GPU, as lctx-train runs them: the `nsa`
// mixer (mean-compressed blocks of 64, 16 selected blocks of 64, a 512-token window, sigmoid
// gates) and the `memory` mixer (window 512, blocks of 64, 16 memory tokens, fixed fusion) next
// to the `softmax` mixer (dense causal flash) at the same T, forward and forward + backward.
// B = 1, 64 query heads and 4 KV heads (GQA 16) of 128, bf16 compute (fp32 master weights). The
// model dim is 128, so the mixers' projections (dim -> heads, gates, output) are a small part:
// lctx's times include them, fla's NSA in bench_memory_fla.py is the attention alone.
// Prints "lctx <kind> T=<T> fwd <ms> fwdbwd <ms> | Mtok/s <fwd> <fwd+bwd>" per case;
// run_bench_memory.sh puts them beside fla's.
// Usage: bench_memory [reps=5] [max T=131072] [kinds=softmax,nsa,memory]
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench_mixer.h"
#include "core/error.h"

using namespace lctx;

namespace {

constexpr int64_t kDim = 128, kHeads = 64, kKvHeads = 4, kHeadDim = 128;

std::vector<std::string> kind_options(const std::string& kind) {
  if (kind == "nsa")
    return {"mixer.nsa.window=512", "mixer.nsa.compress_block=64", "mixer.nsa.select_block=64", "mixer.nsa.top_n=16"};
  if (kind == "memory") return {"mixer.memory.window=512", "mixer.memory.block=64", "mixer.memory.memory_tokens=16"};
  return {};
}

void run(const std::string& kind, int64_t T, int reps) {
  std::vector<std::string> o = {"model.mixers=" + kind, "model.dim=" + std::to_string(kDim),
                                "model.n_heads=" + std::to_string(kHeads), "model.n_kv_heads=" + std::to_string(kKvHeads),
                                "model.head_dim=" + std::to_string(kHeadDim)};
  for (const std::string& s : kind_options(kind)) o.push_back(s);
  const bench::MixerTimes t = bench::time_mixer(o, T, reps);
  std::printf("lctx %s T=%lld fwd %.3f fwdbwd %.3f | Mtok/s %.2f %.2f\n", kind.c_str(), static_cast<long long>(T),
              t.fwd_ms, t.fb_ms, static_cast<double>(T) / t.fwd_ms * 1e-3, static_cast<double>(T) / t.fb_ms * 1e-3);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t max_t = argc > 2 ? std::atoll(argv[2]) : 131072;
  std::vector<std::string> kinds;
  std::stringstream list(argc > 3 ? argv[3] : "softmax,nsa,memory");
  for (std::string k; std::getline(list, k, ',');) kinds.push_back(k);
  if (!cuda_available()) {
    std::printf("bench_memory: no CUDA GPU\n");
    return 0;
  }
  for (const int64_t T : {16384, 65536, 131072}) {
    if (T > max_t) break;
    for (const std::string& k : kinds) {
      try {
        run(k, T, reps);
      } catch (const Error& e) {
        std::printf("lctx %s T=%lld failed: %s\n", k.c_str(), static_cast<long long>(T), e.what());
      }
    }
  }
  return 0;
}
