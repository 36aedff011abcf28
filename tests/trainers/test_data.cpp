// Data: samples depend only on (seed, split, index); sharding over dp/sp reassembles the global
// batch exactly; synthetic tasks score exactly their answer tokens; real data files (bytes,
// uint16/uint32 tokens, HDF5) give windows of the file with a disjoint held-out split. A data
// file that cannot serve a run is an Error naming it: not a regular file, splits too short for
// data.seq_len, an id outside the vocabulary (at start-up, or in the window that reads it), and
// a file truncated, grown or rewritten after it was opened.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "common/data_files.h"
#include "core/error.h"
#include "trainers/config.h"
#include "trainers/data.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

DataConfig synth(const std::string& source, int64_t seq = 64) {
  DataConfig d;
  d.source = source;
  d.seq_len = seq;
  d.batch_size = 4;
  d.passkey_digits = 3;
  d.mqar_pairs = 6;
  d.mqar_queries = 4;
  d.copy_tokens = 5;
  return d;
}

struct Sample {
  std::vector<int32_t> x;
  std::vector<uint8_t> scored;
  std::vector<int64_t> starts;  // documents (none here: data.documents is none)
};

Sample get(const Dataset& ds, const DataConfig& d, Split s, int64_t i) {
  Sample r{std::vector<int32_t>(d.seq_len + 1), std::vector<uint8_t>(d.seq_len), {-1}};
  ds.sample(s, i, r.x.data(), r.scored.data(), r.starts);
  EXPECT_TRUE(r.starts.empty());
  return r;
}

TEST(Data, SamplesAreDeterministicAndDistinct) {
  for (const char* src : {"passkey", "mqar", "selective_copy"}) {
    const DataConfig d = synth(src);
    auto a = make_dataset(d, 64), b = make_dataset(d, 64);
    EXPECT_EQ(get(*a, d, Split::train, 17).x, get(*b, d, Split::train, 17).x) << src;
    EXPECT_NE(get(*a, d, Split::train, 17).x, get(*a, d, Split::train, 18).x) << src;
    EXPECT_NE(get(*a, d, Split::train, 17).x, get(*a, d, Split::eval, 17).x) << src;
    DataConfig other = d;
    other.seed = d.seed + 1;
    EXPECT_NE(get(*make_dataset(other, 64), other, Split::train, 17).x, get(*a, d, Split::train, 17).x) << src;
  }
}

TEST(Data, PasskeyScoresTheDigitsAfterTheQuery) {
  DataConfig d = synth("passkey", 100);
  for (double depth : {0.0, 0.5, 1.0}) {
    d.passkey_depth = depth;
    auto ds = make_dataset(d, 32);
    const Sample s = get(*ds, d, Split::train, 3);
    const int64_t S = d.seq_len, D = d.passkey_digits;
    const int64_t p = static_cast<int64_t>(depth * static_cast<double>(S - 2 * D - 1) + 0.5);
    EXPECT_EQ(s.x[p], tokens::kPasskeyKey);
    EXPECT_EQ(s.x[S - D], tokens::kPasskeyQuery);
    for (int64_t j = 0; j < D; ++j) {
      EXPECT_EQ(s.x[p + 1 + j], s.x[S - D + 1 + j]);
      EXPECT_LT(s.x[S - D + 1 + j], 10);
    }
    int64_t n = 0;
    for (int64_t i = 0; i < S; ++i) n += s.scored[i];
    EXPECT_EQ(n, D);
    for (int64_t j = 0; j < D; ++j) EXPECT_TRUE(s.scored[S - D + j]);
    // Filler never contains digits or markers.
    for (int64_t i = 0; i <= S; ++i) {
      const bool special = (i >= p && i <= p + D) || i >= S - D;
      if (!special) {
        EXPECT_GE(s.x[i], tokens::kPasskeyFillerBegin) << i;
      }
    }
  }
}

TEST(Data, MqarQueriesAskEarlierKeys) {
  const DataConfig d = synth("mqar", 64);
  auto ds = make_dataset(d, 41);
  const Sample s = get(*ds, d, Split::train, 5);
  const int64_t K = (41 - 1) / 2;
  std::map<int32_t, int32_t> kv;
  for (int64_t i = 0; i < d.mqar_pairs; ++i) {
    EXPECT_GE(s.x[2 * i], 1);
    EXPECT_LE(s.x[2 * i], K);
    EXPECT_GT(s.x[2 * i + 1], K);
    EXPECT_TRUE(kv.emplace(s.x[2 * i], s.x[2 * i + 1]).second) << "keys must be distinct";
  }
  int64_t n = 0;
  for (int64_t i = 0; i < d.seq_len; ++i) {
    if (!s.scored[i]) continue;
    ++n;
    ASSERT_TRUE(kv.count(s.x[i])) << "scored position " << i << " is not a queried key";
    EXPECT_EQ(s.x[i + 1], kv[s.x[i]]);
  }
  EXPECT_EQ(n, d.mqar_queries);
}

TEST(Data, SelectiveCopyCopiesInOrder) {
  const DataConfig d = synth("selective_copy", 64);
  auto ds = make_dataset(d, 20);
  const Sample s = get(*ds, d, Split::train, 9);
  const int64_t S = d.seq_len, T = d.copy_tokens;
  std::vector<int32_t> data;
  for (int64_t i = 0; i < S - T; ++i)
    if (s.x[i] != tokens::kCopyNoise) data.push_back(s.x[i]);
  ASSERT_EQ(static_cast<int64_t>(data.size()), T);
  EXPECT_EQ(s.x[S - T], tokens::kCopyMarker);
  for (int64_t j = 0; j < T; ++j) {
    EXPECT_EQ(s.x[S - T + 1 + j], data[j]);
    EXPECT_TRUE(s.scored[S - T + j]);
  }
}

// Every dp/sp layout holds exactly its part of the same global batch.
TEST(Data, ShardsReassembleTheGlobalBatch) {
  DataConfig d = synth("passkey", 64);
  d.batch_size = 4;
  auto ds = make_dataset(d, 32);
  Shard one;
  one.positions = shard_positions(d.seq_len, 1, 1, 0);
  const Batch full = make_batch(*ds, d, Split::train, 8, one);
  const int32_t* fin = full.inputs.data<int32_t>();
  const int32_t* ftg = full.targets.data<int32_t>();
  struct L { int64_t dp, ring, ulysses; };
  for (const L l : {L{2, 2, 1}, L{1, 4, 1}, L{4, 1, 1}, L{2, 1, 2}, L{1, 2, 2}}) {
    int64_t scored = 0;
    std::vector<int> seen(d.batch_size * d.seq_len, 0);
    for (int64_t dr = 0; dr < l.dp; ++dr)
      for (int64_t sr = 0; sr < l.ring * l.ulysses; ++sr) {
        Shard sh;
        sh.dp = l.dp;
        sh.dp_rank = dr;
        sh.positions = shard_positions(d.seq_len, l.ring, l.ulysses, sr);
        const Batch b = make_batch(*ds, d, Split::train, 8, sh);
        scored += b.scored;
        const int64_t Bl = b.inputs.size(0), Sl = b.inputs.size(1);
        for (int64_t bi = 0; bi < Bl; ++bi)
          for (int64_t i = 0; i < Sl; ++i) {
            const int64_t gb = dr * Bl + bi, gp = b.positions.data<int32_t>()[i];
            EXPECT_EQ(b.inputs.data<int32_t>()[bi * Sl + i], fin[gb * d.seq_len + gp]);
            EXPECT_EQ(b.targets.data<int32_t>()[bi * Sl + i], ftg[gb * d.seq_len + gp]);
            ++seen[gb * d.seq_len + gp];
          }
      }
    EXPECT_EQ(scored, full.scored);
    for (int v : seen) ASSERT_EQ(v, 1) << "dp " << l.dp << " ring " << l.ring << " ulysses " << l.ulysses;
  }
}

TEST(Data, ZigzagPositions) {
  // 2 ring ranks, 8 tokens: chunks of 2; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
  EXPECT_EQ(shard_positions(8, 2, 1, 0), (std::vector<int64_t>{0, 1, 6, 7}));
  EXPECT_EQ(shard_positions(8, 2, 1, 1), (std::vector<int64_t>{2, 3, 4, 5}));
}

class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lctx_data_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// Every sample window is a contiguous run of the file; train and eval windows come from
// disjoint ranges.
void expect_windows(const DataConfig& d, int64_t vocab, const std::vector<int32_t>& file) {
  auto ds = make_dataset(d, vocab);
  const int64_t n = static_cast<int64_t>(file.size());
  const int64_t train_end = static_cast<int64_t>(static_cast<double>(n) * (1.0 - d.holdout));
  for (Split s : {Split::train, Split::eval})
    for (int64_t i = 0; i < 20; ++i) {
      const Sample x = get(*ds, d, s, i);
      bool found = false;
      const int64_t lo = s == Split::train ? 0 : train_end, hi = s == Split::train ? train_end : n;
      for (int64_t off = lo; off + d.seq_len + 1 <= hi && !found; ++off)
        found = std::equal(x.x.begin(), x.x.end(), file.begin() + off);
      EXPECT_TRUE(found) << "sample " << i << " is not a window of its split";
      for (auto f : x.scored) EXPECT_EQ(f, 1);
    }
}

TEST_F(DataFiles, TextBytes) {
  std::vector<int32_t> file;
  std::ofstream f(dir_ / "a.txt", std::ios::binary);
  for (int i = 0; i < 3000; ++i) {
    const unsigned char c = static_cast<unsigned char>((i * 7919) % 251);
    f.put(static_cast<char>(c));
    file.push_back(c);
  }
  f.close();
  DataConfig d;
  d.source = "text";
  d.path = (dir_ / "a.txt").string();
  d.seq_len = 16;
  d.holdout = 0.1;
  expect_windows(d, 256, file);
}

TEST_F(DataFiles, Uint16AndUint32Tokens) {
  for (const char* dt : {"uint16", "uint32"}) {
    std::vector<int32_t> file;
    std::ofstream f(dir_ / "t.bin", std::ios::binary);
    for (int i = 0; i < 2000; ++i) {
      const uint32_t v = static_cast<uint32_t>((i * 104729) % 50000);
      file.push_back(static_cast<int32_t>(v));
      if (std::string(dt) == "uint16") {
        const uint16_t w = static_cast<uint16_t>(v);
        f.write(reinterpret_cast<const char*>(&w), 2);
      } else {
        f.write(reinterpret_cast<const char*>(&v), 4);
      }
    }
    f.close();
    DataConfig d;
    d.source = "tokens";
    d.token_dtype = dt;
    d.path = (dir_ / "t.bin").string();
    d.seq_len = 12;
    d.holdout = 0.2;
    expect_windows(d, 50000, file);
    // Ids beyond the vocabulary are an error naming the file, found when the dataset is made.
    try {
      make_dataset(d, 100);
      ADD_FAILURE() << "out-of-vocab token accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("outside model.vocab_size = 100"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(d.path), std::string::npos) << e.what();
    }
  }
}

TEST_F(DataFiles, Hdf5Dataset) {
  std::vector<int32_t> file;
  for (int i = 0; i < 1500; ++i) file.push_back((i * 31) % 1000);
  const std::string path = (dir_ / "d.h5").string();
  test::write_hdf5_ids(path, "ids", file, H5T_STD_U16LE);
  DataConfig d;
  d.source = "hdf5";
  d.path = path;
  d.hdf5_dataset = "ids";
  d.seq_len = 10;
  d.holdout = 0.1;
  expect_windows(d, 1000, file);
  d.hdf5_dataset = "missing";
  try {
    make_dataset(d, 1000);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no dataset 'missing'"), std::string::npos) << e.what();
  }
}

// The message of the Error `fn` throws ("" when it throws none).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(msg, text) \
  EXPECT_NE((msg).find(text), std::string::npos) << "expected '" << (text) << "' in: " << (msg)

void write_hdf5(const std::string& path, const std::vector<int32_t>& ids) { test::write_hdf5_ids(path, "ids", ids); }

// A config reading `ids` written as uint16 tokens or as an HDF5 dataset.
DataConfig file_config(const fs::path& dir, const std::string& source, const std::vector<int32_t>& ids) {
  DataConfig d;
  d.source = source;
  d.seq_len = 16;
  d.holdout = 0.1;
  if (source == "hdf5") {
    d.path = (dir / "ids.h5").string();
    d.hdf5_dataset = "ids";
    write_hdf5(d.path, ids);
  } else {
    d.path = (dir / "ids.bin").string();
    d.token_dtype = "uint16";
    std::ofstream f(d.path, std::ios::binary);
    for (int32_t v : ids) {
      const uint16_t w = static_cast<uint16_t>(v);
      f.write(reinterpret_cast<const char*>(&w), 2);
    }
  }
  return d;
}

std::vector<int32_t> ramp(int64_t n, int32_t vocab) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 37) % vocab);
  return v;
}

// A file cut short after the dataset was made: the next window is an Error naming the file and
// both sizes (a memory map died by SIGBUS here; HDF5 read zeros).
TEST_F(DataFiles, TruncatedFileIsAnErrorNamingIt) {
  for (const char* src : {"tokens", "text", "hdf5"}) {
    DataConfig dd = file_config(dir_, std::string(src) == "hdf5" ? "hdf5" : "tokens", ramp(20000, 256));
    dd.source = src;  // text: the same file's bytes
    auto ds = make_dataset(dd, 256);
    std::vector<int32_t> x(dd.seq_len + 1);
    std::vector<uint8_t> sc(dd.seq_len);
    std::vector<int64_t> starts;
    ds->sample(Split::train, 0, x.data(), sc.data(), starts);
    const auto before = fs::file_size(dd.path);
    fs::resize_file(dd.path, 1000);
    // Every window fails, wherever it lies: the file changed.
    for (int64_t i = 0; i < 3; ++i) {
      const std::string msg = error_of([&] { ds->sample(Split::train, i, x.data(), sc.data(), starts); });
      EXPECT_HAS(msg, dd.path);
      EXPECT_HAS(msg, "data.path");
      EXPECT_HAS(msg, "shrank from " + std::to_string(before) + " to 1000 bytes");
    }
    const std::string eval = error_of([&] { ds->sample(Split::eval, 0, x.data(), sc.data(), starts); });
    EXPECT_HAS(eval, "shrank");
  }
}

TEST_F(DataFiles, GrownOrRewrittenFileIsAnError) {
  const DataConfig d = file_config(dir_, "tokens", ramp(2000, 256));
  std::vector<int32_t> x(d.seq_len + 1);
  std::vector<uint8_t> sc(d.seq_len);
  std::vector<int64_t> starts;
  {
    auto ds = make_dataset(d, 256);
    std::ofstream(d.path, std::ios::binary | std::ios::app) << "xy";
    EXPECT_HAS(error_of([&] { ds->sample(Split::train, 0, x.data(), sc.data(), starts); }), "grew from 4000 to 4002 bytes");
  }
  fs::resize_file(d.path, 4000);
  auto ds = make_dataset(d, 256);
  {
    std::fstream f(d.path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(100);
    f.put('\1');
  }
  fs::last_write_time(d.path, fs::last_write_time(d.path) + std::chrono::seconds(5));
  const std::string msg = error_of([&] { ds->sample(Split::train, 0, x.data(), sc.data(), starts); });
  EXPECT_HAS(msg, d.path);
  EXPECT_HAS(msg, "was rewritten");
}

// Not a regular file: refused before any open that could block (a FIFO's open waits for a
// writer), for every file source.
TEST_F(DataFiles, NonRegularPathIsAnError) {
  const std::string fifo = (dir_ / "fifo").string(), sock = (dir_ / "sock").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  struct Case {
    std::string path, kind;
  };
  for (const Case& c : {Case{fifo, "is a FIFO"}, Case{dir_.string(), "is a directory"},
                        Case{"/dev/null", "is a character device"}, Case{sock, "is a socket"},
                        Case{(dir_ / "missing").string(), "cannot open data.path"}})
    for (const char* src : {"text", "tokens", "hdf5"}) {
      DataConfig d;
      d.source = src;
      d.path = c.path;
      const std::string msg = error_of([&] { make_dataset(d, 256); });
      EXPECT_HAS(msg, c.kind);
      EXPECT_HAS(msg, "data.path '" + c.path + "'");
    }
  ::close(s);
}

// A split too short for one window is found when the dataset is made, not at the first eval.
TEST_F(DataFiles, ShortSplitsAreFoundAtStartUp) {
  for (const char* src : {"tokens", "hdf5"}) {
    DataConfig d = file_config(dir_, src, ramp(100, 256));  // 90 train + 10 eval tokens
    std::string msg = error_of([&] { make_dataset(d, 256, DataChecks{.eval_batches = 2}); });
    const std::vector<std::string> names = {"eval split of " + d.path, "data.holdout = 0.1", "eval.batches = 2",
                                            "data.seq_len + 1 = 17", "has 10 tokens"};
    for (const std::string& t : names)
      EXPECT_HAS(msg, t);
    EXPECT_EQ(error_of([&] { make_dataset(d, 256); }), "") << "no eval, no eval split needed";
    d.holdout = 0;
    EXPECT_HAS(error_of([&] { make_dataset(d, 256, DataChecks{.eval_batches = 1}); }), "has 0 tokens");
    d.seq_len = 100;
    msg = error_of([&] { make_dataset(d, 256); });
    EXPECT_HAS(msg, "train split of " + d.path);
    EXPECT_HAS(msg, "data.seq_len + 1 = 101");
  }
}

// One id outside the vocabulary: found at start-up in a file up to id_scan_max_bytes, else in
// the window that reads it; the error names the file, the position and the id.
TEST_F(DataFiles, OutOfVocabularyIdNamesItsPosition) {
  for (const char* src : {"tokens", "hdf5"}) {
    std::vector<int32_t> ids = ramp(50000, 256);
    ids[31234] = 300;
    DataConfig d = file_config(dir_, src, ids);
    std::string msg = error_of([&] { make_dataset(d, 256); });
    EXPECT_HAS(msg, "token id 300 at position 31234 of " + d.path);
    EXPECT_HAS(msg, "model.vocab_size = 256");
    // Beyond the scan limit: the window holding the id fails. One window: [0, seq_len].
    ids.assign(17, 5);
    ids[9] = 256;
    d = file_config(dir_, src, ids);
    d.holdout = 0;
    auto ds = make_dataset(d, 256, DataChecks{.eval_batches = 0, .id_scan_max_bytes = 0});
    std::vector<int32_t> x(d.seq_len + 1);
    std::vector<uint8_t> sc(d.seq_len);
    std::vector<int64_t> starts;
    msg = error_of([&] { ds->sample(Split::train, 3, x.data(), sc.data(), starts); });
    EXPECT_HAS(msg, "token id 256 at position 9 of " + d.path);
    EXPECT_EQ(error_of([&] { make_dataset(d, 257); }), "");
  }
}

}  // namespace
