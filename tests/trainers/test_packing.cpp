// Packed documents (trainers/packing.h): where each data.documents mode starts documents; the
// boundary labels that are not scored; doc ids and document positions sharded like the tokens
// on 1-8 ranks in both layouts (and Ulysses, and dp); offsets datasets checked with errors
// naming the file and the dataset; and the model: a packed batch gives, document by document,
// the losses (and the gradients) of the same documents run one per sequence, on one rank and on
// sequence-parallel ranks (simulated, and under mpirun -np 2 over MPI).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "common/data_files.h"
#include "core/error.h"
#include "dist/dist_test.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "trainers/config.h"
#include "trainers/data.h"
#include "trainers/model.h"
#include "trainers/packing.h"
#include "trainers/train.h"
#include "trainers/topology.h"

using namespace lctx;
using namespace lctx::train;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> ints(const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  std::copy(t.data<int32_t>(), t.data<int32_t>() + t.numel(), v.begin());
  return v;
}

TEST(Packing, StartsOfEachMode) {
  std::vector<int64_t> starts;
  const int32_t x[] = {5, 1, 7, 1, 1, 3};  // eod 1 at 1, 3, 4: documents start after them
  eod_starts(x, 5, 1, starts);
  EXPECT_EQ(starts, (std::vector<int64_t>{2, 4, 5}));
  eod_starts(x, 3, 1, starts);
  EXPECT_EQ(starts, (std::vector<int64_t>{2}));
  fixed_starts(10, 4, starts);
  EXPECT_EQ(starts, (std::vector<int64_t>{4, 8}));
  fixed_starts(8, 4, starts);
  EXPECT_EQ(starts, (std::vector<int64_t>{4, 8}));
  const std::vector<int64_t> offsets = {0, 3, 9, 12, 20};
  offset_starts(offsets, 3, 9, starts);  // window [3, 12]: the document at 3 is the first one
  EXPECT_EQ(starts, (std::vector<int64_t>{6, 9}));
  offset_starts(offsets, 13, 6, starts);
  EXPECT_TRUE(starts.empty());
  EXPECT_EQ(row_starts(std::vector<int64_t>{6, 9}, 9), (std::vector<int64_t>{0, 6}));
  std::vector<uint8_t> scored(9, 1);
  ignore_boundary_labels(std::vector<int64_t>{6, 9}, scored.data());
  EXPECT_EQ(scored, (std::vector<uint8_t>{1, 1, 1, 1, 1, 0, 1, 1, 0}));
}

class PackingFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lctx_packing_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // n uint16 ids in [0, vocab) with `eod` at about one position in 9.
  DataConfig eod_tokens(int64_t n, int32_t vocab, int32_t eod, int64_t seq_len) {
    std::mt19937 gen(5);
    DataConfig d;
    d.source = "tokens";
    d.token_dtype = "uint16";
    d.path = (dir_ / "eod.bin").string();
    d.seq_len = seq_len;
    d.batch_size = 2;
    d.documents = "eod";
    d.eod_id = eod;
    std::ofstream f(d.path, std::ios::binary);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t v = static_cast<uint16_t>(gen() % 9 == 0 ? eod : gen() % vocab);
      f.write(reinterpret_cast<const char*>(&v), 2);
    }
    return d;
  }
  fs::path dir_;
};

// eod: a document ends with its eod token, whose label (the next document's first token) is
// not scored; every other label is. Documents, doc ids and positions follow the eod tokens.
TEST_F(PackingFiles, EodDocumentsAndBoundaryLabels) {
  for (bool reset : {false, true}) {
    DataConfig d = eod_tokens(4000, 50, 7, 64);
    d.reset_positions = reset;
    auto ds = make_dataset(d, 50);
    Shard one;
    one.positions = shard_positions(d.seq_len, 1, 1, 0);
    const Batch b = make_batch(*ds, d, Split::train, 3, one);
    ASSERT_TRUE(b.doc_ids.defined());
    ASSERT_NE(b.documents, nullptr);
    const int64_t S = d.seq_len;
    const std::vector<int32_t> in = ints(b.inputs), tg = ints(b.targets), ids = ints(b.doc_ids), pos = ints(b.positions);
    EXPECT_EQ(b.positions.shape(), reset ? Shape({2, S}) : Shape({S}));
    int64_t scored = 0, eods = 0;
    for (int64_t r = 0; r < 2; ++r) {
      std::vector<int64_t> starts = {0};
      int32_t doc = 0;
      for (int64_t p = 0; p < S; ++p) {
        const int64_t i = r * S + p;
        EXPECT_EQ(ids[i], doc) << "row " << r << " position " << p;
        EXPECT_EQ(pos[reset ? i : p], reset ? p - starts.back() : p) << "row " << r << " position " << p;
        if (in[i] == d.eod_id) {
          EXPECT_EQ(tg[i], -1) << "the label after an eod token is the next document's";
          ++eods;
          if (p + 1 < S) starts.push_back(p + 1), ++doc;
        } else {
          EXPECT_GE(tg[i], 0);
          if (p + 1 < S) {
            EXPECT_EQ(tg[i], in[i + 1]);
          }
        }
        scored += tg[i] >= 0;
      }
      EXPECT_EQ(b.documents->starts(r), starts) << "row " << r;
    }
    EXPECT_GT(eods, 4);
    EXPECT_EQ(b.scored, scored);
    EXPECT_EQ(scored, 2 * S - eods);
  }
}

// fixed on a file: documents every document_len tokens of the sequence; the label of each
// document's last token is not scored, and that of the sequence's last one only when a
// document starts just after it.
TEST_F(PackingFiles, FixedDocumentsOfAFile) {
  for (int64_t L : {6, 10, 48}) {
    DataConfig d = eod_tokens(2000, 50, 7, 48);
    d.documents = "fixed";
    d.eod_id = -1;
    d.document_len = L;
    auto ds = make_dataset(d, 50);
    Shard one;
    one.positions = shard_positions(d.seq_len, 1, 1, 0);
    const Batch b = make_batch(*ds, d, Split::eval, 0, one);
    const std::vector<int32_t> tg = ints(b.targets), ids = ints(b.doc_ids);
    for (int64_t p = 0; p < d.seq_len; ++p) {
      EXPECT_EQ(ids[p], p / L) << "L " << L << " position " << p;
      EXPECT_EQ(tg[p] < 0, (p + 1) % L == 0) << "L " << L << " position " << p;
    }
  }
}

// An HDF5 file whose tokens are their own stream index (so a window shows where it lies), with
// document starts in the dataset "offs".
void write_offsets_file(const std::string& path, int64_t n, const std::vector<int64_t>& offsets) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i);
  test::write_hdf5_ids(path, "tokens", ids);
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hsize_t dims = offsets.size();
  const hid_t sp = H5Screate_simple(1, &dims, nullptr);
  const hid_t ds = H5Dcreate2(f, "offs", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (!offsets.empty()) H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offsets.data());
  H5Dclose(ds);
  H5Sclose(sp);
  H5Fclose(f);
}

DataConfig offsets_config(const std::string& path) {
  DataConfig d;
  d.source = "hdf5";
  d.path = path;
  d.hdf5_dataset = "tokens";
  d.documents = "offsets";
  d.offsets_dataset = "offs";
  d.seq_len = 40;
  d.batch_size = 4;
  d.holdout = 0.1;
  return d;
}

// offsets: documents start at the offsets inside each window; a label whose token starts a
// document is not scored.
TEST_F(PackingFiles, OffsetsOfAnHdf5File) {
  const int64_t n = 3000;
  std::vector<int64_t> offsets = {0};
  std::mt19937 gen(3);
  while (true) {
    const int64_t next = offsets.back() + 1 + static_cast<int64_t>(gen() % 30);
    if (next >= n) break;
    offsets.push_back(next);
  }
  const std::string path = (dir_ / "offsets.h5").string();
  write_offsets_file(path, n, offsets);
  const DataConfig d = offsets_config(path);
  auto ds = make_dataset(d, n);
  Shard one;
  one.positions = shard_positions(d.seq_len, 1, 1, 0);
  const auto is_start = [&](int64_t t) { return std::binary_search(offsets.begin(), offsets.end(), t); };
  for (Split split : {Split::train, Split::eval}) {
    const Batch b = make_batch(*ds, d, split, 0, one);
    const std::vector<int32_t> in = ints(b.inputs), tg = ints(b.targets), ids = ints(b.doc_ids);
    for (int64_t r = 0; r < d.batch_size; ++r) {
      std::vector<int64_t> starts = {0};
      for (int64_t p = 0; p < d.seq_len; ++p) {
        const int64_t i = r * d.seq_len + p, t = in[i];  // t: the stream index of this token
        if (p > 0 && is_start(t)) starts.push_back(p);
        EXPECT_EQ(ids[i], static_cast<int32_t>(starts.size()) - 1);
        EXPECT_EQ(tg[i], is_start(t + 1) ? -1 : t + 1) << "stream position " << t;
      }
      EXPECT_EQ(b.documents->starts(r), starts);
    }
  }
}

struct BadOffsets {
  const char* name;
  std::function<void(const std::string& path)> write;
  std::vector<std::string> expect;
};

std::vector<BadOffsets> bad_offsets() {
  const auto with = [](std::vector<int64_t> o) {
    return [o](const std::string& path) { write_offsets_file(path, 100, o); };
  };
  const auto of_type = [](hid_t type, int rank) {
    return [type, rank](const std::string& path) {
      write_offsets_file(path, 100, {0});
      const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
      const hsize_t dims[2] = {2, 2};
      const hid_t sp = H5Screate_simple(rank, dims, nullptr);
      H5Dclose(H5Dcreate2(f, "bad", type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      H5Sclose(sp);
      H5Fclose(f);
    };
  };
  return {
      {"missing", [](const std::string& path) { test::write_hdf5_ids(path, "tokens", std::vector<int32_t>(100, 1)); },
       {"has no dataset 'offs' (data.offsets_dataset"}},
      {"floats", of_type(H5T_IEEE_F32LE, 1), {"dataset 'bad' (data.offsets_dataset)", "must hold integers"}},
      {"two_dims", of_type(H5T_STD_I64LE, 2), {"dataset 'bad' (data.offsets_dataset)", "must be 1-D"}},
      {"empty", with({}), {"has 0 offsets; expected 1 to 100"}},
      {"too_many", with(std::vector<int64_t>(101, 0)), {"has 101 offsets; expected 1 to 100"}},
      {"first_not_zero", with({3, 10}), {"must start with offset 0", "got 3"}},
      {"not_ascending", with({0, 10, 10, 20}), {"ascending start offsets", "element 2 is 10 after 10"}},
      {"beyond_tokens", with({0, 50, 100}), {"below the 100 tokens of dataset 'tokens'", "element 2 is 100"}},
  };
}

class BadOffsetsFile : public PackingFiles, public ::testing::WithParamInterface<BadOffsets> {};

TEST_P(BadOffsetsFile, NamesFileDatasetAndExpectation) {
  const BadOffsets& c = GetParam();
  const std::string path = (dir_ / "bad.h5").string();
  c.write(path);
  DataConfig d = offsets_config(path);
  d.seq_len = 8;
  if (std::string(c.name) == "floats" || std::string(c.name) == "two_dims") d.offsets_dataset = "bad";
  std::string msg;
  try {
    make_dataset(d, 100);
  } catch (const Error& e) {
    msg = e.what();
  }
  ASSERT_FALSE(msg.empty()) << c.name << " accepted";
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  for (const std::string& e : c.expect) EXPECT_NE(msg.find(e), std::string::npos) << "expected '" << e << "' in: " << msg;
}

INSTANTIATE_TEST_SUITE_P(Cases, BadOffsetsFile, ::testing::ValuesIn(bad_offsets()),
                         [](const auto& info) { return std::string(info.param.name); });

// fixed on a synthetic task: document k of sample n is task sample n*K + k of document_len - 1
// predictions, the same tokens and labels a run of one sample per sequence sees.
TEST(Packing, SyntheticTasksPackOneSamplePerDocument) {
  for (const char* src : {"passkey", "mqar", "selective_copy"}) {
    DataConfig packed;
    packed.source = src;
    packed.seq_len = 96;
    packed.batch_size = 3;
    packed.passkey_digits = 2;
    packed.mqar_pairs = 4;
    packed.mqar_queries = 3;
    packed.copy_tokens = 4;
    packed.documents = "fixed";
    packed.document_len = 32;
    DataConfig single = packed;
    single.documents = "none";
    single.document_len = 0;
    single.seq_len = packed.document_len - 1;
    single.batch_size = packed.batch_size * 3;
    Shard p1, s1;
    p1.positions = shard_positions(packed.seq_len, 1, 1, 0);
    s1.positions = dist::Layout(dist::LayoutKind::contiguous, single.seq_len, 1).positions(0);  // odd length
    const Batch bp = make_batch(*make_dataset(packed, 40), packed, Split::train, 2, p1);
    const Batch bs = make_batch(*make_dataset(single, 40), single, Split::train, 6, s1);
    EXPECT_EQ(bp.scored, bs.scored) << src;
    EXPECT_GT(bp.scored, 0) << src;
    const std::vector<int32_t> pin = ints(bp.inputs), ptg = ints(bp.targets), sin = ints(bs.inputs), stg = ints(bs.targets);
    const int64_t L = packed.document_len, T = single.seq_len;
    for (int64_t r = 0; r < packed.batch_size; ++r)
      for (int64_t k = 0; k < 3; ++k)
        for (int64_t i = 0; i < L; ++i) {
          const int64_t pi = r * packed.seq_len + k * L + i, si = (r * 3 + k) * T + i;
          if (i < T) {
            EXPECT_EQ(pin[pi], sin[si]) << src << " row " << r << " document " << k << " token " << i;
            EXPECT_EQ(ptg[pi], stg[si]) << src << " row " << r << " document " << k << " token " << i;
          } else {  // every task scores its last prediction: the sample's last token
            EXPECT_EQ(pin[pi], stg[si - 1]) << src << " row " << r << " document " << k;
            EXPECT_EQ(ptg[pi], -1) << "a document's last token predicts nothing";
          }
        }
  }
}

// Doc ids, positions inside documents, tokens and labels of every rank are the whole batch's
// sharded by the dist::Layout: 1-8 ranks, zigzag and contiguous, Ulysses 1 and 2, dp 1 and 2.
struct ShardCase {
  int ranks;
  dist::LayoutKind kind;
};

class PackingShards : public PackingFiles, public ::testing::WithParamInterface<ShardCase> {};

TEST_P(PackingShards, EqualTheLayoutShardOfTheWholeBatch) {
  const auto [n, kind] = GetParam();
  DataConfig d = eod_tokens(8000, 50, 7, 1680);  // 1680: divisible by 2n for n = 1..8
  d.reset_positions = true;
  d.batch_size = 4;
  auto ds = make_dataset(d, 50);
  for (int dp : {1, 2})
    for (int u : {1, 2}) {
      if (n % u != 0) continue;
      const dist::Layout layout(kind, d.seq_len, n / u, u);
      for (int dr = 0; dr < dp; ++dr) {
        DataConfig whole_rows = d;
        whole_rows.batch_size = d.batch_size / dp;
        Shard all;
        all.positions = shard_positions(d.seq_len, 1, 1, 0);
        const Batch full = make_batch(*ds, whole_rows, Split::train, 5 + dr * whole_rows.batch_size, all);
        for (int r = 0; r < n; ++r) {
          Shard sh;
          sh.dp = dp;
          sh.dp_rank = dr;
          sh.positions = layout.positions(r);
          const Batch b = make_batch(*ds, d, Split::train, 5, sh);
          const std::string what = std::to_string(n) + " ranks (ulysses " + std::to_string(u) + ") " +
                                   std::string(dist::layout_kind_name(kind)) + " dp " + std::to_string(dr) + "/" +
                                   std::to_string(dp) + " rank " + std::to_string(r);
          EXPECT_EQ(ints(b.doc_ids), ints(layout.shard(full.doc_ids, r))) << what;
          EXPECT_EQ(ints(b.positions), ints(layout.shard(full.positions, r))) << what;
          EXPECT_EQ(ints(b.inputs), ints(layout.shard(full.inputs, r))) << what;
          EXPECT_EQ(ints(b.targets), ints(layout.shard(full.targets, r))) << what;
          for (int64_t row = 0; row < b.documents->batch(); ++row)
            EXPECT_EQ(b.documents->starts(row), full.documents->starts(row)) << what;
        }
      }
    }
}

std::vector<ShardCase> shard_cases() {
  std::vector<ShardCase> v;
  for (int n = 1; n <= 8; ++n)
    for (dist::LayoutKind k : {dist::LayoutKind::zigzag, dist::LayoutKind::contiguous}) v.push_back({n, k});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Layouts, PackingShards, ::testing::ValuesIn(shard_cases()), [](const auto& info) {
  return std::to_string(info.param.ranks) + "_" + std::string(dist::layout_kind_name(info.param.kind));
});

// ---- the model: packed documents against one document per sequence ------------------------

// A tiny model on passkey samples of 2 digits, K = 4 documents of 16 tokens per packed sequence
// of 64 (data.documents = fixed), or the same samples one per sequence of 15 tokens (an odd
// length: contiguous layout).
constexpr int64_t kDocLen = 16, kDocs = 4, kRows = 2;

Config model_config(const std::string& model_extra, const std::string& parallel, bool packed) {
  const std::string data =
      packed ? "data:\n  source: passkey\n  seq_len: " + std::to_string(kDocs * kDocLen) + "\n  batch_size: " +
                   std::to_string(kRows) + "\n  documents: fixed\n  document_len: " + std::to_string(kDocLen) +
                   "\n  passkey:\n    digits: 2\n"
             : "data:\n  source: passkey\n  seq_len: " + std::to_string(kDocLen - 1) + "\n  batch_size: " +
                   std::to_string(kRows * kDocs) + "\n  passkey:\n    digits: 2\nparallel:\n  layout: contiguous\n";
  return parse_config("model:\n  vocab_size: 24\n  dim: 16\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n"
                      "  init_std: 0.2\n" + model_extra + data + parallel);
}

// One training step's forward and backward of the first batch on `comm` (dp x sp of cfg).
// Rank 0 gets every token's loss and label in global order, [batch rows][positions], and the
// gradients summed over the ranks.
struct StepResult {
  std::vector<std::vector<float>> losses;
  std::vector<std::vector<int32_t>> targets;
  std::vector<double> grads;
};

void packed_step(const Config& cfg, dist::Comm& comm, StepResult& out) {
  dist::Mesh mesh(comm, mesh_shape(cfg));
  const dist::Layout layout = config_layout(cfg);
  Model m(cfg, Device::cpu(), mesh, layout);
  m.init(7);
  const auto data = make_dataset(cfg.data, cfg.model.vocab_size);
  Shard sh;
  sh.dp = cfg.parallel.dp;
  sh.dp_rank = mesh.coords().dp;
  sh.positions = layout.positions(mesh.coords().sp);
  const Batch b = make_batch(*data, cfg.data, Split::train, 0, sh);
  int64_t scored = b.scored;
  comm.all_reduce(std::span<int64_t>(&scored, 1), dist::ReduceOp::sum);
  m.forward_backward(b, 1.0 / static_cast<double>(scored));
  comm.all_reduce(m.flat_grads(), dist::ReduceOp::sum);
  // Whole rows on every sp rank, then every dp rank's rows: [dp, B_local, S].
  const Tensor rows_l = layout.unshard(mesh.sp(), m.token_losses(), 1);
  const Tensor rows_t = layout.unshard(mesh.sp(), b.targets, 1);
  Tensor all_l = Tensor::empty({mesh.dp().size(), rows_l.size(0), rows_l.size(1)}, DType::f32);
  Tensor all_t = Tensor::empty({mesh.dp().size(), rows_t.size(0), rows_t.size(1)}, DType::i32);
  mesh.dp().all_gather(rows_l, all_l);
  mesh.dp().all_gather(rows_t, all_t);
  if (comm.rank() != 0) return;
  const int64_t S = cfg.data.seq_len, B = cfg.data.batch_size;
  out.losses.assign(static_cast<size_t>(B), std::vector<float>(static_cast<size_t>(S)));
  out.targets.assign(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(S)));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t p = 0; p < S; ++p) {
      out.losses[r][p] = all_l.data<float>()[r * S + p];
      out.targets[r][p] = all_t.data<int32_t>()[r * S + p];
    }
  out.grads = m.flat_grads().to_vector();
}

StepResult on_sim_ranks(const Config& cfg) {
  StepResult r;
  dist::run_simulated(static_cast<int>(cfg.parallel.world()), [&](dist::Comm& comm) { packed_step(cfg, comm, r); });
  return r;
}

// Document k of packed row r is sequence r * K + k of the single run: the same labels, the same
// per-token losses (its last token, which predicts nothing, excepted), and the same gradients.
void expect_documents_match(const StepResult& packed, const StepResult& single, const std::string& what) {
  ASSERT_EQ(packed.losses.size(), static_cast<size_t>(kRows)) << what;
  ASSERT_EQ(single.losses.size(), static_cast<size_t>(kRows * kDocs)) << what;
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t k = 0; k < kDocs; ++k) {
      const std::vector<float>& sl = single.losses[r * kDocs + k];
      const std::vector<int32_t>& st = single.targets[r * kDocs + k];
      double packed_sum = 0, single_sum = 0;
      int64_t scored = 0;
      for (int64_t i = 0; i < kDocLen - 1; ++i) {
        const int64_t p = k * kDocLen + i;
        ASSERT_EQ(packed.targets[r][p], st[i]) << what << " row " << r << " document " << k << " token " << i;
        EXPECT_NEAR(packed.losses[r][p], sl[i], 1e-5 * std::max(1.0f, sl[i])) << what << " row " << r << " document " << k;
        packed_sum += packed.losses[r][p], single_sum += sl[i], scored += st[i] >= 0;
      }
      EXPECT_EQ(packed.targets[r][k * kDocLen + kDocLen - 1], -1) << what;
      EXPECT_EQ(scored, 2) << what << ": the passkey's digits";
      EXPECT_NEAR(packed_sum, single_sum, 1e-5 * single_sum) << what << " row " << r << " document " << k;
      EXPECT_GT(single_sum, 0) << what;
    }
  ASSERT_EQ(packed.grads.size(), single.grads.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < single.grads.size(); ++i) {
    num += (packed.grads[i] - single.grads[i]) * (packed.grads[i] - single.grads[i]);
    den += single.grads[i] * single.grads[i];
  }
  EXPECT_GT(den, 0) << what;
  EXPECT_LE(std::sqrt(num / den), 1e-5) << what;
}

enum class Reset { no, yes };  // data.reset_positions

struct ModelCase {
  const char* name;
  const char* model;     // model (and mixer) lines
  const char* parallel;  // parallel section
  Reset reset = Reset::yes;
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

class PackedModel : public ::testing::TestWithParam<ModelCase> {};

// With data.reset_positions each document sees the positions of a sequence of its own. Without
// it the documents keep their places in the sequence, which RoPE and ALiBi do not see: both
// depend on relative positions only (up to rounding).
TEST_P(PackedModel, DocumentsEqualOnePerSequence) {
  LCTX_SIM_ONLY();
  const ModelCase& c = GetParam();
  Config packed = model_config(c.model, c.parallel, true);
  packed.data.reset_positions = c.reset == Reset::yes;
  const StepResult single = on_sim_ranks(model_config(c.model, "", false));
  expect_documents_match(on_sim_ranks(packed), single, c.name);
}

const char* const kAlibiWindow = "  position: alibi\nmixer:\n  softmax:\n    window: 9\n";

INSTANTIATE_TEST_SUITE_P(
    Layouts, PackedModel,
    ::testing::Values(
        ModelCase{"one_rank", "", ""}, ModelCase{"one_rank_alibi_window", kAlibiWindow, "", Reset::no},
        ModelCase{"ring2", "", "parallel:\n  sp: 2\n"}, ModelCase{"ring4", "", "parallel:\n  sp: 4\n"},
        ModelCase{"ring4_sequence_positions", "", "parallel:\n  sp: 4\n", Reset::no},
        ModelCase{"ring4_alibi_window", kAlibiWindow, "parallel:\n  sp: 4\n", Reset::no},
        ModelCase{"ring4_contiguous", "", "parallel:\n  sp: 4\n  layout: contiguous\n"},
        ModelCase{"all_gather4", "mixer:\n  softmax:\n    sp: all_gather\n", "parallel:\n  sp: 4\n"},
        ModelCase{"ulysses2", "", "parallel:\n  sp: 2\n  ulysses: 2\n"},
        ModelCase{"hybrid4_head_groups", "mixer:\n  softmax:\n    head_groups: 2\n", "parallel:\n  sp: 4\n  ulysses: 2\n"},
        ModelCase{"dp2_ring2_recompute", "  activation_checkpointing: all\n", "parallel:\n  dp: 2\n  sp: 2\n"}),
    [](const auto& info) { return std::string(info.param.name); });

// Under mpirun -np 2 (MpiComm), else on 2 simulated ranks: the same equality over a ring of 2
// processes.
TEST(PackedModelMpi, TwoRanksEqualOnePerSequence) {
  Config packed = model_config("", "parallel:\n  sp: 2\n", true);
  packed.data.reset_positions = true;
  const StepResult single = on_sim_ranks(model_config("", "", false));
  StepResult r;
  bool root = false;  // this process holds rank 0
  LCTX_RUN_RANKS_OR_SKIP(2, [&](dist::Comm& comm) {
    packed_step(packed, comm, r);
    if (comm.rank() == 0) root = true;
  });
  if (root) expect_documents_match(r, single, test::mpi_world() ? "mpi sp 2" : "sim sp 2");
}

// lctx-train on packed documents: eod-delimited documents of a token file over 2 simulated ring
// ranks, with positions restarting at each document, trains and evaluates.
TEST_F(PackingFiles, TrainingRunOnSimulatedRanks) {
  LCTX_SIM_ONLY();
  const DataConfig d = eod_tokens(6000, 64, 3, 32);
  Config cfg = parse_config(
      "model:\n  vocab_size: 64\n  dim: 16\n  n_layers: 1\n  n_heads: 2\n"
      "parallel:\n  sp: 2\n  simulate: 2\n"
      "data:\n  source: tokens\n  path: " + d.path + "\n  seq_len: 32\n  batch_size: 2\n  documents: eod\n"
      "  eod_id: 3\n  reset_positions: true\n"
      "train:\n  steps: 3\n  threads: 1\neval:\n  batches: 1\ncheckpoint:\n  save_final: false\n"
      "logging:\n  progress: false\n  out_dir: " + (dir_ / "run").string() + "\n");
  RunHooks h;
  h.quiet = true;
  const RunResult r = run_training(cfg, h);
  ASSERT_EQ(r.train.size(), 3u);
  for (const StepRecord& s : r.train) EXPECT_TRUE(std::isfinite(s.loss) && s.loss > 0);
  ASSERT_EQ(r.eval.size(), 1u);
  EXPECT_TRUE(std::isfinite(r.eval[0].loss));
}

}  // namespace
