#include "trainers/data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "core/philox.h"
#include "dist/layout.h"
#include "trainers/hdf5_check.h"
#include "trainers/packing.h"

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

// A synthetic task: generate() writes one sample of its DataConfig's seq_len; alone it is the
// whole sequence, one document.
class Task : public Dataset {
 public:
  virtual void generate(Split split, int64_t index, int32_t* x, uint8_t* scored) const = 0;
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored, std::vector<int64_t>& starts) const final {
    generate(split, index, x, scored);
    starts.clear();
  }
};

class PasskeyTask final : public Task {
 public:
  PasskeyTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void generate(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
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

class MqarTask final : public Task {
 public:
  MqarTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void generate(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
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

class SelectiveCopyTask final : public Task {
 public:
  SelectiveCopyTask(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab) {}
  void generate(Split split, int64_t index, int32_t* x, uint8_t* scored) const override {
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

// data.documents = fixed on a synthetic task: sample n of a split is K = seq_len / document_len
// documents, task samples n*K .. n*K + K - 1 of document_len tokens each (the task's seq_len is
// document_len - 1: a document's last token predicts nothing, its label would be the next
// document's first token).
class PackedTask final : public Dataset {
 public:
  PackedTask(std::unique_ptr<Task> task, const DataConfig& d) : task_(std::move(task)), d_(d) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored, std::vector<int64_t>& starts) const override {
    const int64_t S = d_.seq_len, L = d_.document_len, K = S / L;
    std::fill(scored, scored + S, 0);
    for (int64_t k = 0; k < K; ++k) task_->generate(split, index * K + k, x + k * L, scored + k * L);
    x[S] = 0;  // no next document: the last label is a boundary's, never scored
    fixed_starts(S, L, starts);
  }
  std::string describe() const override {
    return task_->describe() + ", packed " + std::to_string(d_.seq_len / d_.document_len) + " per sequence";
  }

 private:
  std::unique_ptr<Task> task_;
  DataConfig d_;
};

// What a file that is not a regular file is, for the error naming it.
const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "of an unknown kind";
}

// The data file of a run, opened read-only: a regular file only (checked before the open, which
// would block on a FIFO, and again on the descriptor), with its size and modification time at
// open; every read checks that they have not changed since.
class DataFile {
 public:
  explicit DataFile(const std::string& path) : path_(path) {
    struct stat st {};
    LCTX_CHECK(::stat(path.c_str(), &st) == 0, "data: cannot open data.path '", path, "': ", std::strerror(errno));
    check_regular(st);
    // O_NONBLOCK: a path swapped for a FIFO after the stat above fails the check below instead
    // of blocking the open (it has no effect on reads of a regular file).
    fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    LCTX_CHECK(fd_ >= 0, "data: cannot open data.path '", path, "': ", std::strerror(errno));
    if (::fstat(fd_, &st_) != 0) st_.st_mode = 0;
    if (!S_ISREG(st_.st_mode)) ::close(std::exchange(fd_, -1));
    check_regular(st_);
  }
  ~DataFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;

  int64_t bytes() const { return static_cast<int64_t>(st_.st_size); }
  // The file HDF5 opened by the same path must be this one (same device and inode).
  bool same_file(int fd) const {
    struct stat st {};
    return ::fstat(fd, &st) == 0 && st.st_dev == st_.st_dev && st.st_ino == st_.st_ino;
  }

  // Reads bytes [offset, offset + n) into dst; a failed or short read, or a file that changed
  // since it was opened, is an error naming the file.
  void read(int64_t offset, int64_t n, void* dst) const {
    auto* p = static_cast<char*>(dst);
    int64_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd_, p + done, static_cast<size_t>(n - done), static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      LCTX_CHECK(r >= 0, "data: reading data.path '", path_, "' at byte ", offset + done, " failed: ",
                 std::strerror(errno));
      if (r == 0) break;
      done += r;
    }
    check_unchanged();  // a short read is a file that shrank: named here
    LCTX_CHECK(done == n, "data: data file ", path_, " (data.path) ended at byte ", offset + done, " of the ", bytes(),
               " it had when opened");
  }

  void check_unchanged() const {
    struct stat now {};
    LCTX_CHECK(::fstat(fd_, &now) == 0, "data: cannot stat data.path '", path_, "': ", std::strerror(errno));
    const char* fix = " since lctx-train opened it; a run needs its data unchanged (restore the file, then --resume)";
    LCTX_CHECK(now.st_size >= st_.st_size, "data: data file ", path_, " (data.path) shrank from ", st_.st_size, " to ",
               now.st_size, " bytes", fix);
    LCTX_CHECK(now.st_size == st_.st_size, "data: data file ", path_, " (data.path) grew from ", st_.st_size, " to ",
               now.st_size, " bytes", fix);
    const bool same_mtime = now.st_mtim.tv_sec == st_.st_mtim.tv_sec && now.st_mtim.tv_nsec == st_.st_mtim.tv_nsec;
    LCTX_CHECK(same_mtime, "data: data file ", path_, " (data.path) was rewritten (same size, new modification time)",
               fix);
  }

 private:
  void check_regular(const struct stat& st) const {
    LCTX_CHECK(S_ISREG(st.st_mode), "data: data.path '", path_, "' is ", file_kind(st.st_mode),
               ", not a regular file (lctx-train reads windows at random offsets of a file that must not change;",
               " copy the data into a file)");
  }

  std::string path_;
  int fd_ = -1;
  struct stat st_ {};
};

// Real data: token ids in [0, n), windows at pseudo-random offsets of the split's range.
class TokenFile : public Dataset {
 public:
  TokenFile(const DataConfig& d, int64_t vocab) : d_(d), vocab_(vocab), mode_(document_mode(d)) {}
  void sample(Split split, int64_t index, int32_t* x, uint8_t* scored, std::vector<int64_t>& starts) const override {
    const int64_t S = d_.seq_len;
    const int64_t train_end = split_end();
    const int64_t begin = split == Split::train ? 0 : train_end, end = split == Split::train ? train_end : n_;
    LCTX_CHECK(end - begin >= S + 1, "data: the ", split == Split::train ? "train" : "eval", " split of ", d_.path, " has ",
               end - begin, " tokens, fewer than data.seq_len + 1 = ", S + 1,
               split == Split::eval ? " (raise data.holdout or use a larger file)" : "");
    SampleRng rng(d_.seed, split, index);
    const int64_t off = begin + rng.below(end - begin - S);
    read(off, S + 1, x);
    check_ids(x, S + 1, off);
    std::fill(scored, scored + S, 1);
    switch (mode_) {
      case DocumentMode::none: starts.clear(); break;
      case DocumentMode::eod: eod_starts(x, S, static_cast<int32_t>(d_.eod_id), starts); break;
      case DocumentMode::offsets: offset_starts(offsets_, off, S, starts); break;
      case DocumentMode::fixed: fixed_starts(S, d_.document_len, starts); break;
    }
  }

  // What make_dataset checks before the first step: both splits hold a window, and (for a file
  // of at most checks.id_scan_max_bytes) every id is in the vocabulary.
  void check_at_start(const DataChecks& checks) const {
    const int64_t S = d_.seq_len, train_end = split_end();
    LCTX_CHECK(train_end >= S + 1, "data: the train split of ", d_.path, " (data.path) has ", train_end, " of its ", n_,
               " tokens (data.holdout = ", d_.holdout, " held out), fewer than data.seq_len + 1 = ", S + 1,
               "; use a larger file or a smaller data.seq_len");
    LCTX_CHECK(checks.eval_batches <= 0 || n_ - train_end >= S + 1, "data: the eval split of ", d_.path,
               " (data.path) has ", n_ - train_end, " tokens (the last data.holdout = ", d_.holdout, " of its ", n_,
               "), fewer than the data.seq_len + 1 = ", S + 1, " that eval.batches = ", checks.eval_batches,
               " needs; raise data.holdout, use a larger file, lower data.seq_len or set eval.batches: 0");
    if (id_bound_ <= vocab_ || n_ * token_bytes_ > checks.id_scan_max_bytes) return;
    const int64_t chunk = std::min<int64_t>(n_, int64_t{1} << 20);
    std::vector<int32_t> ids(static_cast<size_t>(chunk));
    for (int64_t pos = 0; pos < n_; pos += chunk) {
      const int64_t count = std::min(chunk, n_ - pos);
      read(pos, count, ids.data());
      check_ids(ids.data(), count, pos);
    }
  }

 protected:
  // Reads the ids at token positions [offset, offset + count) of the file into `out`.
  virtual void read(int64_t offset, int64_t count, int32_t* out) const = 0;
  int64_t split_end() const { return static_cast<int64_t>(static_cast<double>(n_) * (1.0 - d_.holdout)); }
  // x[0, count) are the ids at token positions [pos, pos + count).
  void check_ids(const int32_t* x, int64_t count, int64_t pos) const {
    const int32_t* bad = std::find_if(x, x + count, [&](int32_t id) { return id < 0 || id >= vocab_; });
    LCTX_CHECK(bad == x + count, "data: token id ", *bad, " at position ", pos + (bad - x), " of ", d_.path,
               " (data.path) is outside model.vocab_size = ", vocab_,
               *bad < 0 ? " (a negative id, or a uint32 id above 2^31 - 1)" : "");
  }

  DataConfig d_;
  int64_t vocab_;
  DocumentMode mode_;
  std::vector<int64_t> offsets_;  // DocumentMode::offsets: every document's start, ascending
  int64_t n_ = 0;                 // tokens in the file
  int64_t token_bytes_ = 4;       // bytes per token in the file
  int64_t id_bound_ = INT64_MAX;  // every id the file's type can hold is below this
};

// text (bytes) and tokens (uint16 / uint32) files, read with pread.
class RawTokens final : public TokenFile {
 public:
  RawTokens(const DataConfig& d, int64_t vocab) : TokenFile(d, vocab), file_(d.path) {
    token_bytes_ = d.source == "text" ? 1 : (d.token_dtype == "uint16" ? 2 : 4);
    id_bound_ = token_bytes_ == 4 ? INT64_MAX : int64_t{1} << (8 * token_bytes_);
    LCTX_CHECK(file_.bytes() % token_bytes_ == 0, "data: ", d.path, " has ", file_.bytes(),
               " bytes, not a multiple of ", token_bytes_, " (data.token_dtype ", d.token_dtype, ")");
    n_ = file_.bytes() / token_bytes_;
    LCTX_CHECK(mode_ != DocumentMode::offsets, "data: data.documents = offsets reads data.offsets_dataset of an hdf5 ",
               "file, but data.source is ", d.source);
  }
  std::string describe() const override {
    return (d_.source == "text" ? "bytes of " : d_.token_dtype + " tokens of ") + d_.path + " (" + std::to_string(n_) +
           " tokens)";
  }

 protected:
  void read(int64_t offset, int64_t count, int32_t* out) const override {
    // The raw bytes go to the front of `out` and are widened in place from the back: token i's
    // bytes lie at or below out[i], above every token still to widen.
    file_.read(offset * token_bytes_, count * token_bytes_, out);
    const auto* raw = reinterpret_cast<const uint8_t*>(out);
    for (int64_t i = count - 1; i >= 0; --i) {
      const uint8_t* p = raw + i * token_bytes_;
      if (token_bytes_ == 1) {
        out[i] = p[0];
      } else if (token_bytes_ == 2) {
        out[i] = static_cast<int32_t>(p[0] | (p[1] << 8));
      } else {
        uint32_t v;
        std::memcpy(&v, p, 4);
        out[i] = v > 0x7fffffffu ? -1 : static_cast<int32_t>(v);
      }
    }
  }

 private:
  DataFile file_;
};

class Hdf5Tokens final : public TokenFile {
 public:
  Hdf5Tokens(const DataConfig& d, int64_t vocab) : TokenFile(d, vocab), watch_(d.path) {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    const Hdf5Quiet quiet;
    H5Id fapl(LCTX_HDF5_CHECK(H5Pcreate(H5P_FILE_ACCESS), d.path), H5Pclose);
    LCTX_HDF5_CHECK(H5Pset_fapl_sec2(fapl), d.path);  // a POSIX descriptor: compared with watch_'s below
    file_ = H5Id(H5Fopen(d.path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
    LCTX_CHECK(file_ >= 0, "data: cannot open HDF5 file data.path = '", d.path, "'");
    void* handle = nullptr;
    LCTX_HDF5_CHECK(H5Fget_vfd_handle(file_, fapl, &handle), d.path);
    LCTX_CHECK(handle && watch_.same_file(*static_cast<int*>(handle)), "data: data.path '", d.path,
               "' was replaced while lctx-train opened it");
    LCTX_CHECK(H5Lexists(file_, d.hdf5_dataset.c_str(), H5P_DEFAULT) > 0, "data: ", d.path, " has no dataset '",
               d.hdf5_dataset, "' (data.hdf5_dataset)");
    dset_ = H5Id(LCTX_HDF5_CHECK(H5Dopen2(file_, d.hdf5_dataset.c_str(), H5P_DEFAULT), d.path), H5Dclose);
    n_ = extent();
    H5Id type(LCTX_HDF5_CHECK(H5Dget_type(dset_), d.path), H5Tclose);
    LCTX_CHECK(H5Tget_class(type) == H5T_INTEGER, "data: dataset '", d.hdf5_dataset, "' in ", d.path, " must hold integers");
    token_bytes_ = static_cast<int64_t>(H5Tget_size(type));
    if (mode_ == DocumentMode::offsets) read_offsets();
  }
  std::string describe() const override {
    return "HDF5 " + d_.path + ":" + d_.hdf5_dataset + " (" + std::to_string(n_) + " tokens)";
  }

 protected:
  // HDF5 reads zeros past the end of a truncated file, so the file is checked after each read.
  void read(int64_t offset, int64_t count, int32_t* out) const override {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    const Hdf5Quiet quiet;
    const int64_t n = extent();
    LCTX_CHECK(n == n_, "data: dataset '", d_.hdf5_dataset, "' in ", d_.path, " (data.path) has ", n,
               " elements, it had ", n_, " when opened");
    H5Id fspace(LCTX_HDF5_CHECK(H5Dget_space(dset_), d_.path), H5Sclose);
    const hsize_t start[1] = {static_cast<hsize_t>(offset)}, cnt[1] = {static_cast<hsize_t>(count)};
    LCTX_HDF5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, cnt, nullptr), d_.path);
    H5Id mspace(LCTX_HDF5_CHECK(H5Screate_simple(1, cnt, nullptr), d_.path), H5Sclose);
    const herr_t status = H5Dread(dset_, H5T_NATIVE_INT32, mspace, fspace, H5P_DEFAULT, out);
    watch_.check_unchanged();  // a changed file explains a failed read; it also voids a successful one
    LCTX_CHECK(status >= 0, "data: HDF5 could not read ", count, " ids at position ", offset, " of dataset '",
               d_.hdf5_dataset, "' in ", d_.path, " (data.path)");
  }

 private:
  // Elements in the 1-D dataset `dset` (named `name`, read for option `key`).
  int64_t extent(hid_t dset, const std::string& name, const char* key) const {
    H5Id space(LCTX_HDF5_CHECK(H5Dget_space(dset), d_.path), H5Sclose);
    LCTX_CHECK(H5Sget_simple_extent_ndims(space) == 1, "data: dataset '", name, "' (", key, ") in ", d_.path,
               " must be 1-D");
    hsize_t dims[1];
    LCTX_HDF5_CHECK(H5Sget_simple_extent_dims(space, dims, nullptr), d_.path);
    return static_cast<int64_t>(dims[0]);
  }
  int64_t extent() const { return extent(dset_, d_.hdf5_dataset, "data.hdf5_dataset"); }

  // data.offsets_dataset: a 1-D integer dataset of at most one offset per token, read whole and
  // checked (first 0, strictly ascending, each below the tokens of data.hdf5_dataset).
  void read_offsets() {
    const std::string& name = d_.offsets_dataset;
    const std::string what = "data: dataset '" + name + "' (data.offsets_dataset) in " + d_.path;
    LCTX_CHECK(H5Lexists(file_, name.c_str(), H5P_DEFAULT) > 0, "data: ", d_.path, " has no dataset '", name,
               "' (data.offsets_dataset: the start offsets of the documents, for data.documents = offsets)");
    H5Id dset(LCTX_HDF5_CHECK(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), d_.path), H5Dclose);
    H5Id type(LCTX_HDF5_CHECK(H5Dget_type(dset), d_.path), H5Tclose);
    LCTX_CHECK(H5Tget_class(type) == H5T_INTEGER, what, " must hold integers (document start offsets)");
    const int64_t n = extent(dset, name, "data.offsets_dataset");
    LCTX_CHECK(n >= 1 && n <= n_, what, " has ", n, " offsets; expected 1 to ", n_,
               " (one start per document, at most one per token of dataset '", d_.hdf5_dataset, "')");
    offsets_.resize(static_cast<size_t>(n));
    LCTX_HDF5_CHECK(H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offsets_.data()), d_.path,
                    " reading dataset '", name, "' (data.offsets_dataset)");
    LCTX_CHECK(offsets_[0] == 0, what, " must start with offset 0 (the first document starts the stream), got ",
               offsets_[0]);
    for (size_t i = 1; i < offsets_.size(); ++i)
      LCTX_CHECK(offsets_[i] > offsets_[i - 1] && offsets_[i] < n_, what, " must hold ascending start offsets below ",
                 "the ", n_, " tokens of dataset '", d_.hdf5_dataset, "': element ", i, " is ", offsets_[i],
                 " after ", offsets_[i - 1]);
  }

  DataFile watch_;  // the same file as file_: its size and modification time are watched
  H5Id file_, dset_;
};

template <class File>
std::unique_ptr<Dataset> open_file(const DataConfig& d, int64_t vocab_size, const DataChecks& checks) {
  auto f = std::make_unique<File>(d, vocab_size);
  f->check_at_start(checks);
  return f;
}

// The synthetic task of data.source generating samples of t.seq_len, or null for a file.
std::unique_ptr<Task> make_task(const DataConfig& t, int64_t vocab_size) {
  if (t.source == "passkey") return std::make_unique<PasskeyTask>(t, vocab_size);
  if (t.source == "mqar") return std::make_unique<MqarTask>(t, vocab_size);
  if (t.source == "selective_copy") return std::make_unique<SelectiveCopyTask>(t, vocab_size);
  return nullptr;
}

}  // namespace

std::unique_ptr<Dataset> make_dataset(const DataConfig& d, int64_t vocab_size, const DataChecks& checks) {
  const DocumentMode mode = document_mode(d);
  DataConfig task = d;
  if (mode == DocumentMode::fixed) task.seq_len = d.document_len - 1;
  if (std::unique_ptr<Task> t = make_task(task, vocab_size)) {
    LCTX_CHECK(mode == DocumentMode::none || mode == DocumentMode::fixed, "data: data.documents = ", d.documents,
               " needs a file (data.source text, tokens or hdf5); a synthetic task packs with data.documents: fixed");
    if (mode == DocumentMode::none) return t;
    LCTX_CHECK(d.document_len >= 2 && d.seq_len % d.document_len == 0, "data: a packed synthetic task needs ",
               "data.document_len >= 2 dividing data.seq_len (", d.seq_len, "), got ", d.document_len);
    return std::make_unique<PackedTask>(std::move(t), d);
  }
  if (d.source == "text" || d.source == "tokens") return open_file<RawTokens>(d, vocab_size, checks);
  if (d.source == "hdf5") return open_file<Hdf5Tokens>(d, vocab_size, checks);
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
  const bool packed = document_mode(d) != DocumentMode::none;
  Batch b;
  b.inputs = Tensor::empty({B, Sl}, DType::i32);
  b.targets = Tensor::empty({B, Sl}, DType::i32);
  int32_t* in = b.inputs.data<int32_t>();
  int32_t* tg = b.targets.data<int32_t>();
  std::vector<int32_t> x(S + 1);
  std::vector<uint8_t> sc(S);
  std::vector<int64_t> starts;
  std::vector<std::vector<int64_t>> rows;  // packed: each row's document starts
  for (int64_t bi = 0; bi < B; ++bi) {
    data.sample(split, first + shard.dp_rank * B + bi, x.data(), sc.data(), starts);
    ignore_boundary_labels(starts, sc.data());
    if (packed) rows.push_back(row_starts(starts, S));
    for (int64_t i = 0; i < Sl; ++i) {
      const int64_t p = pos[i];
      in[bi * Sl + i] = x[p];
      tg[bi * Sl + i] = sc[p] ? x[p + 1] : -1;
      b.scored += sc[p];
    }
  }
  if (packed) {
    b.documents = std::make_shared<const attn::Documents>(S, std::move(rows));
    TokenDocuments t = shard_documents(*b.documents, pos, position_mode(d));
    b.doc_ids = t.doc_ids;
    b.positions = t.positions;
  }
  if (!b.positions.defined()) {
    b.positions = Tensor::empty({Sl}, DType::i32);
    for (int64_t i = 0; i < Sl; ++i) b.positions.data<int32_t>()[i] = static_cast<int32_t>(pos[i]);
  }
  return b;
}

}  // namespace lctx::train
