// A seeded config fuzzer. Mutations of a tiny valid config (options set to values of every
// type and size, keys removed or repeated, sections replaced, text truncated or garbled) go
//   - through parse_config in the process (thousands of cases): a config is accepted, or
//     rejected by an lctx::Error that starts "config:"; never another exception;
//   - through lctx-train (a few dozen cases, each a 2-step run): the suite's oracle, exit 0 or an
//     error naming a key or a file, never a signal, a hang or a raw exception text.
// LCTX_FUZZ_CASES=<n> scales both counts (default 1); LCTX_FUZZ_SEED=<s> replays a run.
#include <cstdlib>
#include <fstream>
#include <random>
#include <typeinfo>
#include <sstream>

#include "core/error.h"
#include "robustness/program.h"

using namespace lctx;
using namespace lctx::test;

namespace {

int scale() {
  const char* v = std::getenv("LCTX_FUZZ_CASES");
  return v && std::atoi(v) > 0 ? std::atoi(v) : 1;
}
uint64_t seed() {
  const char* v = std::getenv("LCTX_FUZZ_SEED");
  return v ? std::strtoull(v, nullptr, 10) : 20261130;
}

// Values of every shape an option can be given. Sizes are tiny, invalid or far too large:
// never a valid size that would only make a run slow.
const std::vector<std::string>& values() {
  static const std::vector<std::string> v = {
      "-1", "0", "1", "2", "3", "7", "64", "4294967296", "1099511627776", "4611686018427387904", "9223372036854775807",
      "-9223372036854775808", "1.5", "1e3", "0x10", "1e-9", "0.5", "1e300", "-1e300", ".inf", "-.inf", ".nan",
      "true", "false", "yes", "null", "~", "''", "abc", "\"a\\0b\"", "[]", "[1, 2]", "[softmax]", "[softmax, softmax]",
      "[mamba]", "softmax", "{a: 1}", "all", "none", "[0]", "[5]", "[-1]", "ring", "ulysses", "hybrid", "all_gather",
      "auto", "zigzag", "contiguous", "cpu", "cuda", "sim", "mpi", "nccl", "bf16", "f32", "passkey", "mqar",
      "selective_copy", "text", "tokens", "hdf5", "uint32", "alibi", "none", "lctx", "cudnn", "qwen3-0.6b",
      "/dev/null", "/nonexistent/file", "/proc/self/mem"};
  return v;
}

const char* kBase =
    "model:\n  vocab_size: 64\n  dim: 16\n  n_layers: 1\n  n_heads: 2\n"
    "data:\n  seq_len: 32\n  batch_size: 2\n"
    "train:\n  steps: 2\n  threads: 1\n  device: cpu\n"
    "eval:\n  batches: 1\n"
    "checkpoint:\n  every: 0\n"
    "logging:\n  every: 1\n  progress: false\n";

// Options the program fuzzer leaves alone: a valid large value of these only makes a run long.
bool keeps_runs_short(const std::string& key) {
  return key == "train.steps" || key == "eval.batches" || key == "logging.out_dir" || key == "parallel.simulate";
}

// A value near the option's default (half of the mutations: these mostly stay valid, so the
// runs get past validation), else any value of values().
std::string value_for(std::mt19937_64& rng, const std::string& key) {
  static const train::Config defaults;
  if (rng() % 2) return values()[rng() % values().size()];
  const std::string d = train::option_value(defaults, key);
  if (d == "true" || d == "false") return d == "true" ? "false" : "true";
  char* end = nullptr;
  const double v = std::strtod(d.c_str(), &end);
  if (d.empty() || *end != '\0') return values()[rng() % values().size()];
  const bool integral = d.find_first_of(".e") == std::string::npos;
  const double nearby[] = {v * 2, v / 2, v + 1, 1, 0, 2};
  const double x = nearby[rng() % 6];
  std::ostringstream os;
  if (integral) os << static_cast<long long>(x);
  else os << x;
  return os.str();
}

// A mutated config: kBase plus 1-3 options set to random values, sometimes with a structural change.
std::string mutate(std::mt19937_64& rng, std::vector<std::string>& overrides, bool for_program) {
  const auto keys = train::option_paths();
  std::string yaml = kBase;
  const int n = 1 + static_cast<int>(rng() % 3);
  for (int i = 0; i < n; ++i) {
    const std::string& k = keys[rng() % keys.size()];
    if (for_program && keeps_runs_short(k)) continue;
    overrides.push_back(k + "=" + value_for(rng, k));
  }
  if (for_program) return yaml;
  switch (rng() % 8) {
    case 0: yaml += "model:\n  dim: 32\n"; break;                       // a repeated section
    case 1: yaml.insert(yaml.find("  dim: 16\n"), "  dim: 8\n"); break;  // a duplicate key
    case 2: yaml = yaml.substr(0, rng() % yaml.size()); break;          // truncated text
    case 3: yaml[rng() % yaml.size()] = static_cast<char>(rng() % 128); break;  // a garbled byte
    case 4: yaml += "---\nmodel: {}\n"; break;                          // a second document
    case 5: yaml = "model: " + values()[rng() % values().size()] + "\n"; break;  // a section of the wrong type
    default: break;
  }
  return yaml;
}

TEST(FuzzConfig, ParseAcceptsOrNamesTheKey) {
  std::mt19937_64 rng(seed());
  const int cases = 3000 * scale();
  int accepted = 0;
  for (int c = 0; c < cases; ++c) {
    std::vector<std::string> overrides;
    const std::string yaml = mutate(rng, overrides, false);
    try {
      train::parse_config(yaml, overrides);
      ++accepted;
    } catch (const Error& e) {
      const std::string msg = e.what();
      ASSERT_NE(msg.find("config"), std::string::npos) << "seed " << seed() << " case " << c << ": " << msg;
      for (const std::string& t : raw_failure_texts())
        ASSERT_EQ(msg.find(t), std::string::npos) << "seed " << seed() << " case " << c << ": " << msg;
    } catch (const std::exception& e) {
      FAIL() << "seed " << seed() << " case " << c << ": " << typeid(e).name() << ": " << e.what() << "\nyaml:\n" << yaml;
    }
  }
  std::printf("[ fuzz ] %d configs, %d accepted (seed %llu)\n", cases, accepted, static_cast<unsigned long long>(seed()));
  EXPECT_GT(accepted, cases / 20);  // the mutations also produce valid configs
}

class FuzzProgram : public ProgramTest {};

TEST_F(FuzzProgram, RunsCleanly) {
  std::mt19937_64 rng(seed() + 1);
  const int cases = 40 * scale();
  const std::string cfg = dir_ + "/base.yaml";
  std::ofstream(cfg) << kBase;
  int ran = 0;
  for (int c = 0; c < cases; ++c) {
    std::vector<std::string> overrides;
    mutate(rng, overrides, true);
    std::vector<std::string> args = {cfg, "--out", dir_ + "/run" + std::to_string(c)};
    for (const auto& o : overrides) args.insert(args.end(), {"--set", o});
    const ProgramResult r = run_program(args, 60);
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    ASSERT_TRUE(clean_outcome(r)) << "seed " << seed() + 1 << " case " << c << ": lctx-train" << cmd;
    ran += r.exit_code == 0;
  }
  std::printf("[ fuzz ] %d runs, %d trained to the end (seed %llu)\n", cases, ran,
              static_cast<unsigned long long>(seed() + 1));
}

}  // namespace
