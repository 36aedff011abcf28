// A seeded checkpoint-corruption fuzzer. One valid run leaves checkpoints of steps 2 and 4;
// each case corrupts the step-4 file at random (bit flips, truncation, zeroed or random byte
// ranges, root attribute values through the HDF5 API, dataset dims), loads it in a child
// process (load_checkpoint must accept it or throw an lctx::Error naming the file), and runs
// lctx-train with --resume=<file> and --resume (auto): the oracle is clean_outcome(), and an
// auto-resume past a rejected file continues from step 2 (a tiny run: about 0.1 s a case).
// LCTX_FUZZ_CASES sets the number of cases (default 150), LCTX_FUZZ_SEED the seed; each case
// draws from its own generator (seed, case), so LCTX_FUZZ_CASE=<n> replays case n alone. A
// failure prints the seed, the case and what it did, and keeps the corrupted file.
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "common/checkpoint_files.h"
#include "robustness/program.h"
#include "trainers/checkpoint.h"

namespace fs = std::filesystem;


namespace lctx::test {
namespace {

using namespace ckpt;

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// What load_checkpoint, in a child process, made of a file.
struct LoadOutcome {
  enum Kind { loaded, error, other_exception, crashed } kind;
  std::string message;
};

LoadOutcome load_in_child(const std::string& file) {
  int fds[2];
  if (::pipe(fds) != 0) return {LoadOutcome::crashed, "pipe failed"};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    int code = 0;
    std::string msg;
    try {
      train::load_checkpoint(file);
    } catch (const Error& e) {
      code = 1, msg = e.what();
    } catch (const std::exception& e) {
      code = 2, msg = e.what();
    }
    (void)!::write(fds[1], msg.data(), msg.size());
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return {LoadOutcome::crashed, "signal " + std::to_string(WTERMSIG(status))};
  const int code = WEXITSTATUS(status);
  return {code == 0 ? LoadOutcome::loaded : code == 1 ? LoadOutcome::error : LoadOutcome::other_exception, msg};
}

class CheckpointFuzz : public ProgramTest {
 protected:
  // Applies one random corruption to `file` (whose valid bytes are `good`); returns what it did.
  // `meta`: the offsets of the bytes outside the datasets' data (HDF5 metadata, attributes).
  std::string corrupt(std::mt19937_64& rng, const std::string& file, const std::string& good,
                      const std::vector<size_t>& meta, const std::vector<std::vector<uint64_t>>& shapes) {
    std::string b = good;
    std::ostringstream what;
    const auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    // Half of the offsets in the metadata, which the HDF5 library parses.
    const auto offset = [&] { return pick(2) ? meta[pick(meta.size())] : pick(b.size()); };
    const uint64_t interesting[] = {0, 1, 2, 3, 7, 64, 255, uint64_t{1} << 30, uint64_t{1} << 31, uint64_t{1} << 32,
                                    uint64_t{1} << 60, uint64_t{1} << 62, ~uint64_t{0}, ~uint64_t{0} >> 1,
                                    uint64_t{1} << 63};
    switch (pick(7)) {
      case 0: {  // bit flips at random offsets
        const uint64_t n = 1 + pick(8);
        what << "flip bits at";
        for (uint64_t i = 0; i < n; ++i) {
          const size_t at = offset();
          const int bit = static_cast<int>(pick(8));
          b[at] = static_cast<char>(b[at] ^ (1 << bit));
          what << " " << at << ":" << bit;
        }
        write_bytes(file, b);
        break;
      }
      case 1: {  // truncation
        const size_t len = pick(b.size());
        b.resize(len);
        what << "truncate to " << len;
        write_bytes(file, b);
        break;
      }
      case 2: {  // a zeroed range
        const size_t at = offset(), len = std::min<size_t>(b.size() - at, 1 + pick(pick(2) ? 16 : 4096));
        std::fill(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + len), '\0');
        what << "zero " << len << " bytes at " << at;
        write_bytes(file, b);
        break;
      }
      case 3: {  // random bytes in a range
        const size_t at = offset(), len = std::min<size_t>(b.size() - at, 1 + pick(64));
        for (size_t i = at; i < at + len; ++i) b[i] = static_cast<char>(pick(256));
        what << "randomize " << len << " bytes at " << at;
        write_bytes(file, b);
        break;
      }
      case 4:
      case 5: {  // a root attribute's value through the HDF5 API
        const char* names[] = {"format_version", "step",         "adam_step",           "mesh_dp",
                               "mesh_sp",        "mesh_ulysses", "data_consumed_samples", "data_seed",
                               "skipped_steps"};
        const char* name = names[pick(std::size(names))];
        int64_t v = static_cast<int64_t>(interesting[pick(std::size(interesting))]);
        if (pick(3) == 0) v = static_cast<int64_t>(0 - static_cast<uint64_t>(v));  // negated (INT64_MIN stays)
        if (pick(4) == 0) v = static_cast<int64_t>(rng());
        write_bytes(file, b);
        what << "attribute " << name << " = " << v << (set_root_attr(file, name, v) ? "" : " (not set)");
        break;
      }
      default: {  // a dataset's dims
        const std::vector<uint64_t>& dims = shapes[pick(shapes.size())];
        const std::vector<size_t> at = dims_offsets(b, dims);
        write_bytes(file, b);
        if (at.empty()) {
          what << "dims: no dataspace found";
          break;
        }
        const size_t off = at[pick(at.size())] + 8 * pick(dims.size());
        uint64_t v = interesting[pick(std::size(interesting))];
        if (pick(3) == 0) v = pick(2) ? dims[0] + 1 : dims[0] - 1;
        write_u64_at(file, off, v);
        what << "dims at " << off << " (a shape of rank " << dims.size() << ") = " << v;
        break;
      }
    }
    return what.str();
  }
};

TEST_F(CheckpointFuzz, CorruptedCheckpoints) {
  const int64_t cases = env_int("LCTX_FUZZ_CASES", 150);
  const uint64_t seed = static_cast<uint64_t>(env_int("LCTX_FUZZ_SEED", 20261130));  // fixed: CI stays reproducible
  std::cout << "checkpoint fuzzer: LCTX_FUZZ_SEED=" << seed << ", " << cases << " cases\n";
  std::ofstream(dir_ + "/cfg.yaml") << kTinyModel;
  const std::string run = dir_ + "/run", ckpts = run + "/checkpoints";
  const std::vector<std::string> base = {dir_ + "/cfg.yaml", "--out", run, "--set", "train.steps=4", "--set",
                                         "checkpoint.save_final=false"};
  {
    std::vector<std::string> args = base;
    args.insert(args.end(), {"--set", "checkpoint.every=2"});
    const ProgramResult r = run_program(args, 120);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const std::string f2 = train::checkpoint_path(ckpts, 2), f4 = train::checkpoint_path(ckpts, 4);
  const std::string good2 = read_bytes(f2), good4 = read_bytes(f4);
  const train::CheckpointState st = train::load_checkpoint(f4);
  std::vector<std::vector<uint64_t>> shapes = {{st.rng_state.size() / 2, 2}};  // and those of the parameters
  for (const auto& [name, t] : st.params) shapes.emplace_back(t.shape().begin(), t.shape().end());
  std::vector<bool> is_data(good4.size(), false);
  {
    const hid_t file = H5Fopen(f4.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    std::vector<std::string> paths = {"/rng/state"};
    for (const char* g : {"/params/", "/optimizer/m/", "/optimizer/v/"})
      for (const auto& [name, t] : st.params) paths.push_back(g + name);
    for (const std::string& p : paths) {
      const hid_t d = H5Dopen2(file, p.c_str(), H5P_DEFAULT);
      const haddr_t at = H5Dget_offset(d);
      const hsize_t n = H5Dget_storage_size(d);
      for (hsize_t i = 0; i < n && at + i < is_data.size(); ++i) is_data[at + i] = true;
      H5Dclose(d);
    }
    H5Fclose(file);
  }
  std::vector<size_t> meta;
  for (size_t i = 0; i < is_data.size(); ++i)
    if (!is_data[i]) meta.push_back(i);
  ASSERT_FALSE(meta.empty());

  int64_t rejected = 0;
  // One case: the in-process load (in a child), then lctx-train with --resume=<file> and --resume.
  const auto check = [&](const std::string& replay) {
    const LoadOutcome load = load_in_child(f4);
    ASSERT_TRUE(load.kind == LoadOutcome::loaded || load.kind == LoadOutcome::error)
        << replay << "\nload_checkpoint: " << (load.kind == LoadOutcome::crashed ? "crashed, " : "raw exception: ")
        << load.message;
    if (load.kind == LoadOutcome::error) {
      ++rejected;
      EXPECT_NE(load.message.find(f4), std::string::npos) << replay << "\nthe error names no file: " << load.message;
      for (const std::string& t : raw_failure_texts())
        EXPECT_EQ(load.message.find(t), std::string::npos) << replay << "\nraw failure text in: " << load.message;
    }
    std::vector<std::string> explicit_args = base;
    explicit_args.push_back("--resume=" + f4);
    const ProgramResult e = run_program(explicit_args, 30);
    ASSERT_TRUE(clean_outcome(e, {f4})) << replay << " (--resume=" << f4 << ")";
    if (load.kind == LoadOutcome::error) {
      EXPECT_EQ(e.exit_code, 1) << replay << "\n" << e.output;
    }
    std::vector<std::string> auto_args = base;
    auto_args.push_back("--resume");
    const ProgramResult a = run_program(auto_args, 30);
    ASSERT_TRUE(clean_outcome(a, {f4, f2})) << replay << " (--resume)";
    if (load.kind == LoadOutcome::error) {
      EXPECT_EQ(a.exit_code, 0) << replay << "\n" << a.output;
      EXPECT_NE(a.output.find("resumed from " + f2 + " at step 2"), std::string::npos) << replay << "\n" << a.output;
    }
  };
  const int64_t only = env_int("LCTX_FUZZ_CASE", -1);
  for (int64_t c = only >= 0 ? only : 0; c < (only >= 0 ? only + 1 : cases); ++c) {
    std::seed_seq case_seed = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                               static_cast<uint32_t>(c)};
    std::mt19937_64 rng(case_seed);
    // The directory as the valid run left it.
    fs::remove_all(ckpts);
    fs::create_directories(ckpts);
    write_bytes(f2, good2);
    const std::string what = corrupt(rng, f4, good4, meta, shapes);
    // A failing case's file is kept for a look (the scratch dir goes away).
    const std::string kept = (fs::temp_directory_path() /
                              ("lctx_fuzz_checkpoint_" + std::to_string(seed) + "_" + std::to_string(c) + ".h5"))
                                 .string();
    fs::copy_file(f4, kept, fs::copy_options::overwrite_existing);
    check("LCTX_FUZZ_SEED=" + std::to_string(seed) + " LCTX_FUZZ_CASE=" + std::to_string(c) + ": " + what +
          " (the file is kept as " + kept + ")");
    if (HasFailure()) return;
    fs::remove(kept);
  }
  std::cout << "checkpoint fuzzer: " << rejected << " of the files rejected by load_checkpoint\n";
}

}  // namespace
}  // namespace lctx::test
