#include "trainers/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "core/philox.h"
#include "dist/layout.h"
#include "trainers/hdf5_check.h"

namespace lctx::train {

namespace {

// Counter-based stream of random words for one sample: key from (seed, split, index).
class SampleRng {
 public:
  SampleRng(int64_t seed, Split split, int64_t index) {
    const philox::U4 k = philox::generate(static_cast<uint64_t>(seed) * 2 + (split == Split::eval ? 1 : 0),
                                          static_cast<uint64_t>(index));
    key_ = (static_cast<uint64_t>(k.x) << 32) | k.y;
  }
  uint32_t next() {
    if (avail_ == 0) {
      const philox::U4 r = philox::generate(key_, ctr_++);
      buf_[0] = r.x, buf_[1] = r.y, buf_[2] = r.z, buf_[3] = r.w;
      avail_ = 4;
    }
    return buf_[--avail_];
  }
  // Uniform in [0, n), n > 0.
  int64_t below(int64_t n) {
    const uint64_t w = (static_cast<uint64_t>(next()) << 32) | next();
    return static_cast<int64_t>(w % static_cast<uint64_t>(n));
  }

 private:
  uint64_t key_ = 0, ctr_ = 0;
  uint32_t buf_[4] = {};
  int avail_ = 0;
};

class PasskeyTask final : public Dataset {
 public:
  PasskeyTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
    SampleRng rng(d_.seed, split, index);
    const int64_t S = d_.seq_len, D = d_.passkey_digits;
    const int64_t nfill = vocab_ - tokens::kPasskeyFillerBegin;
    for (int64_t i = 0; i <= S; ++i) x[i] = static_cast<int32_t>(tokens::kPasskeyFillerBegin + rng.below(nfill));
    std::fill(scored, scored + S, 0);
    std::vector<int32_t> key(D);
    for (auto& k : key) k = static_cast<int32_t>(rng.below(10));
    // The key "KEY d1..dD" starts at p in [0, S - 2D - 1]; the answer "QUERY d1..dD" ends at x[S].
    const int64_t last = S - 2 * D - 1;
    const int64_t p = d_.passkey_depth < 0 ? rng.below(last + 1)
                                           : static_cast<int64_t>(d_.passkey_depth * static_cast<double>(last) + 0.5);
    x[p] = tokens::kPasskeyKey;
    for (int64_t j = 0; j < D; ++j) x[p + 1 + j] = key[j];
    x[S - D] = tokens::kPasskeyQuery;
    for (int64_t j = 0; j < D; ++j) {
      x[S - D + 1 + j] = key[j];
      scored[S - D + j] = 1;
    }
  }
  std::string describe() const override {
    return "passkey retrieval (" + std::to_string(d_.passkey_digits) + " digits, depth " +
           (d_.passkey_depth < 0 ? std::string("random") : std::to_string(d_.passkey_depth)) + ")";
  }

 private:
  DataConfig d_;
  int64_t vocab_;
};

class MqarTask final : public Dataset {
 public:
  MqarTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
    SampleRng rng(d_.seed, split, index);
    const int64_t S = d_.seq_len, P = d_.mqar_pairs, Q = d_.mqar_queries;
    const int64_t K = (vocab_ - 1) / 2, V = vocab_ - 1 - K;
    std::fill(x, x + S + 1, tokens::kMqarFiller);
    std::fill(scored, scored + S, 0);
    // P distinct keys (partial Fisher-Yates over the key range), random values.
    std::vector<int32_t> keys(K);
    for (int64_t i = 0; i < K; ++i) keys[i] = static_cast<int32_t>(1 + i);
    for (int64_t i = 0; i < P; ++i) std::swap(keys[i], keys[i + rng.below(K - i)]);
    std::vector<int32_t> vals(P);
    for (auto& v : vals) v = static_cast<int32_t>(1 + K + rng.below(V));
    for (int64_t i = 0; i < P; ++i) x[2 * i] = keys[i], x[2 * i + 1] = vals[i];
    // Q distinct pairs queried at the end: "k v" with v at x[S - 2Q + 2 + 2j].
    std::vector<int64_t> order(P);
    for (int64_t i = 0; i < P; ++i) order[i] = i;
    for (int64_t i = 0; i < Q; ++i) std::swap(order[i], order[i + rng.below(P - i)]);
    for (int64_t j = 0; j < Q; ++j) {
      const int64_t kpos = S - 2 * Q + 1 + 2 * j;
      x[kpos] = keys[order[j]];
      x[kpos + 1] = vals[order[j]];
      scored[kpos] = 1;
    }
  }
  std::string describe() const override {
    return "multi-query associative recall (" + std::to_string(d_.mqar_pairs) + " pairs, " +
           std::to_string(d_.mqar_queries) + " queries)";
  }

 private:
  DataConfig d_;
  int64_t vocab_;
};

class SelectiveCopyTask final : public Dataset {
 public:
  SelectiveCopyTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
    SampleRng rng(d_.seed, split, index);
    const int64_t S = d_.seq_len, T = d_.copy_tokens, region = S - T;
    std::fill(x, x + S + 1, tokens::kCopyNoise);
    std::fill(scored, scored + S, 0);
    // T distinct sorted positions in [0, region) by selection sampling.
    std::vector<int64_t> pos;
    for (int64_t i = 0, need = T; i < region && need > 0; ++i)
      if (rng.below(region - i) < need) pos.push_back(i), --need;
    std::vector<int32_t> data(T);
    for (auto& t : data) t = static_cast<int32_t>(tokens::kCopyDataBegin + rng.below(vocab_ - tokens::kCopyDataBegin));
    for (int64_t j = 0; j < T; ++j) x[pos[j]] = data[j];
    x[S - T] = tokens::kCopyMarker;
    for (int64_t j = 0; j < T; ++j) {
      x[S - T + 1 + j] = data[j];
      scored[S - T + j] = 1;
    }
  }
  std::string describe() const override { return "selective copying (" + std::to_string(d_.copy_tokens) + " tokens)"; }

 private:
  DataConfig d_;
  int64_t vocab_;
};

// Real data: token ids in [0, n), windows at pseudo-random offsets of the split's range.
class TokenFile : public Dataset {
 public:
  TokenFile(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
    const int64_t S = d_.seq_len;
    const int64_t train_end = static_cast<int64_t>(static_cast<double>(n_) * (1.0 - d_.holdout));
    const int64_t begin = split == Split::train ? 0 : train_end, end = split == Split::train ? train_end : n_;
    LCTX_CHECK(end - begin >= S + 1, "data: the ", split == Split::train ? "train" : "eval", " split of ", d_.path, " has ",
               end - begin, " tokens, fewer than data.seq_len + 1 = ", S + 1,
               split == Split::eval ? " (raise data.holdout or use a larger file)" : "");
    SampleRng rng(d_.seed, split, index);
    const int64_t off = begin + rng.below(end - begin - S);
    read(off, S + 1, x);
    for (int64_t i = 0; i <= S; ++i)
      LCTX_CHECK(x[i] >= 0 && x[i] < vocab_, "data: token ", x[i], " at offset ", off + i, " of ", d_.path,
                 " is outside model.vocab_size = ", vocab_);
    std::fill(scored, scored + S, 1);
  }

 protected:
  virtual void read(int64_t offset, int64_t count, int32_t* out) const = 0;
  DataConfig d_;
  int64_t vocab_;
  int64_t n_ = 0;  // tokens in the file
};

// text (bytes) and tokens (uint16 / uint32) files, memory-mapped read-only.
class MappedFile final : public TokenFile {
 public:
  MappedFile(const DataConfig& d, int64_t vocab) : TokenFile(d, vocab) {
    elem_ = d.source == "text" ? 1 : (d.token_dtype == "uint16" ? 2 : 4);
    const int fd = ::open(d.path.c_str(), O_RDONLY);
    LCTX_CHECK(fd >= 0, "data: cannot open data.path '", d.path, "': ", std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    bytes_ = static_cast<size_t>(st.st_size);
    LCTX_CHECK(bytes_ % elem_ == 0, "data: ", d.path, " has ", bytes_, " bytes, not a multiple of ", elem_, " (data.token_dtype ",
               d.token_dtype, ")");
    if (bytes_ > 0) {
      map_ = ::mmap(nullptr, bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
      ::close(fd);
      LCTX_CHECK(map_ != MAP_FAILED, "data: cannot mmap '", d.path, "': ", std::strerror(errno));
    } else {
      ::close(fd);
    }
    n_ = static_cast<int64_t>(bytes_ / elem_);
  }
  ~MappedFile() override {
    if (map_ && map_ != MAP_FAILED) ::munmap(map_, bytes_);
  }
  std::string describe() const override {
    return (d_.source == "text" ? "bytes of " : d_.token_dtype + " tokens of ") + d_.path + " (" + std::to_string(n_) +
           " tokens)";
  }

 protected:
  void read(int64_t offset, int64_t count, int32_t* out) const override {
    const auto* p = static_cast<const uint8_t*>(map_) + offset * elem_;
    for (int64_t i = 0; i < count; ++i) {
      if (elem_ == 1) out[i] = p[i];
      else if (elem_ == 2) out[i] = static_cast<int32_t>(p[2 * i] | (p[2 * i + 1] << 8));
      else {
        uint32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        out[i] = v > 0x7fffffffu ? -1 : static_cast<int32_t>(v);
      }
    }
  }

 private:
  void* map_ = nullptr;
  size_t bytes_ = 0;
  int64_t elem_ = 1;
};

class Hdf5Tokens final : public TokenFile {
 public:
  Hdf5Tokens(const DataConfig& d, int64_t vocab) : TokenFile(d, vocab) {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    const Hdf5Quiet quiet;
    file_ = H5Id(H5Fopen(d.path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    LCTX_CHECK(file_ >= 0, "data: cannot open HDF5 file data.path = '", d.path, "'");
    LCTX_CHECK(H5Lexists(file_, d.hdf5_dataset.c_str(), H5P_DEFAULT) > 0, "data: ", d.path, " has no dataset '",
               d.hdf5_dataset, "' (data.hdf5_dataset)");
    dset_ = H5Id(LCTX_HDF5_CHECK(H5Dopen2(file_, d.hdf5_dataset.c_str(), H5P_DEFAULT), d.path), H5Dclose);
    H5Id space(LCTX_HDF5_CHECK(H5Dget_space(dset_), d.path), H5Sclose);
    LCTX_CHECK(H5Sget_simple_extent_ndims(space) == 1, "data: dataset '", d.hdf5_dataset, "' in ", d.path, " must be 1-D");
    hsize_t dims[1];
    H5Sget_simple_extent_dims(space, dims, nullptr);
    n_ = static_cast<int64_t>(dims[0]);
    H5Id type(LCTX_HDF5_CHECK(H5Dget_type(dset_), d.path), H5Tclose);
    LCTX_CHECK(H5Tget_class(type) == H5T_INTEGER, "data: dataset '", d.hdf5_dataset, "' in ", d.path, " must hold integers");
  }
  std::string describe() const override {
    return "HDF5 " + d_.path + ":" + d_.hdf5_dataset + " (" + std::to_string(n_) + " tokens)";
  }

 protected:
  void read(int64_t offset, int64_t count, int32_t* out) const override {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    H5Id fspace(LCTX_HDF5_CHECK(H5Dget_space(dset_), d_.path), H5Sclose);
    const hsize_t start[1] = {static_cast<hsize_t>(offset)}, cnt[1] = {static_cast<hsize_t>(count)};
    LCTX_HDF5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, cnt, nullptr), d_.path);
    H5Id mspace(LCTX_HDF5_CHECK(H5Screate_simple(1, cnt, nullptr), d_.path), H5Sclose);
    LCTX_HDF5_CHECK(H5Dread(dset_, H5T_NATIVE_INT32, mspace, fspace, H5P_DEFAULT, out), "reading ", d_.path);
  }

 private:
  H5Id file_, dset_;
};

}  // namespace

std::unique_ptr<Dataset> make_dataset(const DataConfig& d, int64_t vocab_size) {
  if (d.source == "passkey") return std::make_unique<PasskeyTask>(d, vocab_size);
  if (d.source == "mqar") return std::make_unique<MqarTask>(d, vocab_size);
  if (d.source == "selective_copy") return std::make_unique<SelectiveCopyTask>(d, vocab_size);
  if (d.source == "text" || d.source == "tokens") return std::make_unique<MappedFile>(d, vocab_size);
  if (d.source == "hdf5") return std::make_unique<Hdf5Tokens>(d, vocab_size);
  LCTX_FAIL("data: unknown data.source '", d.source, "'");
}

std::vector<int64_t> shard_positions(int64_t seq_len, int64_t ring, int64_t ulysses, int64_t sp_rank) {
  const dist::Layout layout(dist::LayoutKind::zigzag, seq_len, static_cast<int>(ring), static_cast<int>(ulysses));
  return layout.positions(static_cast<int>(sp_rank));
}

Batch make_batch(const Dataset& data, const DataConfig& d, Split split, int64_t first, const Shard& shard) {
  const int64_t S = d.seq_len, B = d.batch_size / shard.dp;
  const std::vector<int64_t>& pos = shard.positions;
  const int64_t Sl = static_cast<int64_t>(pos.size());
  Batch b;
  b.inputs = Tensor::empty({B, Sl}, DType::i32);
  b.targets = Tensor::empty({B, Sl}, DType::i32);
  b.positions = Tensor::empty({Sl}, DType::i32);
  int32_t* in = b.inputs.data<int32_t>();
  int32_t* tg = b.targets.data<int32_t>();
  int32_t* ps = b.positions.data<int32_t>();
  for (int64_t i = 0; i < Sl; ++i) ps[i] = static_cast<int32_t>(pos[i]);
  std::vector<int32_t> x(S + 1);
  std::vector<uint8_t> sc(S);
  for (int64_t bi = 0; bi < B; ++bi) {
    data.sample(split, first + shard.dp_rank * B + bi, x.data(), sc.data());
    for (int64_t i = 0; i < Sl; ++i) {
      const int64_t p = pos[i];
      in[bi * Sl + i] = x[p];
      tg[bi * Sl + i] = sc[p] ? x[p + 1] : -1;
      b.scored += sc[p];
    }
  }
  return b;
}

}  // namespace lctx::train
