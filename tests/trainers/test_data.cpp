// Data: samples depend only on (seed, split, index); sharding over dp/sp reassembles the global
// batch exactly; synthetic tasks score exactly their answer tokens; real data files (bytes,
// uint16/uint32 tokens, HDF5) give windows of the file with a disjoint held-out split.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

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
};

Sample get(const Dataset& ds, const DataConfig& d, Split s, int64_t i) {
  Sample r{std::vector<int32_t>(d.seq_len + 1), std::vector<uint8_t>(d.seq_len)};
  ds.sample(s, i, r.x.data(), r.scored.data());
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
    // Ids beyond the vocabulary are an error naming the file.
    auto small = make_dataset(d, 100);
    std::vector<int32_t> x(13);
    std::vector<uint8_t> sc(12);
    try {
      small->sample(Split::train, 0, x.data(), sc.data());
      ADD_FAILURE() << "out-of-vocab token accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("outside model.vocab_size = 100"), std::string::npos) << e.what();
    }
  }
}

TEST_F(DataFiles, Hdf5Dataset) {
  std::vector<int32_t> file;
  for (int i = 0; i < 1500; ++i) file.push_back((i * 31) % 1000);
  const std::string path = (dir_ / "d.h5").string();
  {
    const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t n = file.size();
    const hid_t sp = H5Screate_simple(1, &n, nullptr);
    const hid_t ds = H5Dcreate2(f, "ids", H5T_STD_U16LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, file.data());
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
  }
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

}  // namespace
