#include "trainers/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <type_traits>

#include "trainers/hdf5_check.h"

namespace fs = std::filesystem;

namespace lctx::train {

Hdf5Quiet::Hdf5Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
Hdf5Quiet::~Hdf5Quiet() { H5Eclear2(H5E_DEFAULT); }

std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

void write_attr_i64(hid_t obj, const char* name, int64_t v) {
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  LCTX_HDF5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v), name);
}

void write_attr_f64(hid_t obj, const char* name, double v) {
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  LCTX_HDF5_CHECK(H5Awrite(a, H5T_NATIVE_DOUBLE, &v), name);
}

void write_attr_str(hid_t obj, const char* name, const std::string& v) {
  H5Id type(LCTX_HDF5_CHECK(H5Tcopy(H5T_C_S1), name), H5Tclose);
  LCTX_HDF5_CHECK(H5Tset_size(type, std::max<size_t>(v.size(), 1)), name);
  LCTX_HDF5_CHECK(H5Tset_strpad(type, H5T_STR_NULLPAD), name);
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  const std::string buf = v.empty() ? std::string(1, '\0') : v;
  LCTX_HDF5_CHECK(H5Awrite(a, type, buf.data()), name);
}


namespace {

// Bounds of the root attributes: the schema's largest train.steps, data.batch_size and
// parallel degree.
constexpr int64_t kMaxStep = int64_t{1} << 40;
constexpr int64_t kMaxBatch = int64_t{1} << 24;
constexpr int64_t kMaxDegree = int64_t{1} << 20;
constexpr int kMaxRank = 8;                  // of a parameter
constexpr hsize_t kMaxGroupLinks = 1 << 20;  // datasets in one group
constexpr ssize_t kMaxNameLen = 4096;

constexpr uint64_t kFnvBasis = 1469598103934665603ull;

uint64_t fnv1a(const void* data, size_t n, uint64_t h = kFnvBasis) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
uint64_t fnv1a_u64(uint64_t v, uint64_t h) { return fnv1a(&v, sizeof v, h); }

// A dataset's checksum: format 2 covers its shape (rank, then each dim) and its bytes; format 1
// its bytes only.
uint64_t dataset_checksum(int64_t version, const std::vector<hsize_t>& dims, const void* data, size_t bytes) {
  uint64_t h = kFnvBasis;
  if (version >= 2) {
    h = fnv1a_u64(dims.size(), h);
    for (hsize_t d : dims) h = fnv1a_u64(d, h);
  }
  return fnv1a(data, bytes, h);
}

// An entry of attribute_checksums: its name (with the terminating NUL) and its value; a string
// value is preceded by its length.
uint64_t attr_checksum(const char* name, int64_t v) {
  return fnv1a_u64(static_cast<uint64_t>(v), fnv1a(name, std::strlen(name) + 1));
}
uint64_t attr_checksum(const char* name, const std::string& v) {
  return fnv1a(v.data(), v.size(), fnv1a_u64(v.size(), fnv1a(name, std::strlen(name) + 1)));
}
// The last entry: the sorted dataset paths.
uint64_t datasets_checksum(std::vector<std::string> paths) {
  std::sort(paths.begin(), paths.end());
  uint64_t h = fnv1a("datasets", sizeof "datasets");
  for (const auto& p : paths) h = fnv1a(p.data(), p.size(), fnv1a_u64(p.size(), h));
  return h;
}

// The integer root attributes in the order of attribute_checksums (config and the dataset list
// follow them).
struct IntAttr {
  const char* name;
  int64_t CheckpointState::*field;
};
constexpr IntAttr kIntAttrs[] = {
    {"format_version", &CheckpointState::format_version},
    {"step", &CheckpointState::step},
    {"adam_step", &CheckpointState::adam_step},
    {"mesh_dp", &CheckpointState::mesh_dp},
    {"mesh_sp", &CheckpointState::mesh_sp},
    {"mesh_ulysses", &CheckpointState::mesh_ulysses},
    {"data_consumed_samples", &CheckpointState::data_consumed_samples},
    {"data_seed", &CheckpointState::data_seed},
    {"skipped_steps", &CheckpointState::skipped_steps},
};
constexpr size_t kNumIntAttrs = std::size(kIntAttrs);
constexpr size_t kNumAttrChecksums = kNumIntAttrs + 2;  // + config + the dataset list

std::vector<uint64_t> attribute_checksums(const CheckpointState& st, const std::vector<std::string>& paths) {
  std::vector<uint64_t> c;
  for (const IntAttr& a : kIntAttrs) c.push_back(attr_checksum(a.name, st.*a.field));
  c.push_back(attr_checksum("config", st.config_yaml));
  c.push_back(datasets_checksum(paths));
  return c;
}

std::string dims_str(const std::vector<hsize_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

void write_attr_u64s(hid_t obj, const char* name, const std::vector<uint64_t>& v, bool scalar) {
  const hsize_t n = v.size();
  H5Id space(LCTX_HDF5_CHECK(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  LCTX_HDF5_CHECK(H5Awrite(a, H5T_NATIVE_UINT64, v.data()), name);
}

// Opens attribute `name` of `obj` (`where`: the file and object, for messages) after checking
// that it exists and holds `count` elements of class `cls`, each at most `max_size` bytes.
H5Id open_attr(hid_t obj, const char* name, const std::string& where, H5T_class_t cls, hssize_t count,
               size_t max_size) {
  const htri_t exists = H5Aexists(obj, name);
  LCTX_CHECK(exists >= 0, "checkpoint ", where, ": cannot look up attribute '", name, "': the file is corrupt");
  LCTX_CHECK(exists > 0, "checkpoint ", where, ": attribute '", name, "' is missing");
  H5Id a(LCTX_HDF5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), where, " attribute ", name), H5Aclose);
  H5Id type(LCTX_HDF5_CHECK(H5Aget_type(a), where, " attribute ", name), H5Tclose);
  H5Id space(LCTX_HDF5_CHECK(H5Aget_space(a), where, " attribute ", name), H5Sclose);
  const size_t size = H5Tget_size(type);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  const bool fixed = cls != H5T_STRING || !H5Tis_variable_str(type);
  LCTX_CHECK(H5Tget_class(type) == cls && size > 0 && size <= max_size && fixed, "checkpoint ", where, ": attribute '",
             name, "' has the wrong type (expected ",
             cls == H5T_STRING ? "a fixed-length string" : "a 64-bit integer", ")");
  LCTX_CHECK(n == count, "checkpoint ", where, ": attribute '", name, "' holds ", n, " values, expected ", count);
  return a;
}

int64_t read_attr_i64(hid_t obj, const char* name, const std::string& where) {
  H5Id a = open_attr(obj, name, where, H5T_INTEGER, 1, 8);
  int64_t v = 0;
  LCTX_HDF5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v), where, " attribute ", name);
  return v;
}

std::vector<uint64_t> read_attr_u64s(hid_t obj, const char* name, const std::string& where, hssize_t count) {
  H5Id a = open_attr(obj, name, where, H5T_INTEGER, count, 8);
  std::vector<uint64_t> v(static_cast<size_t>(count));
  LCTX_HDF5_CHECK(H5Aread(a, H5T_NATIVE_UINT64, v.data()), where, " attribute ", name);
  return v;
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& where, size_t max_size) {
  H5Id a = open_attr(obj, name, where, H5T_STRING, 1, max_size);
  H5Id type(LCTX_HDF5_CHECK(H5Aget_type(a), where, " attribute ", name), H5Tclose);
  std::string s(H5Tget_size(type), '\0');
  LCTX_HDF5_CHECK(H5Aread(a, type, s.data()), where, " attribute ", name);
  s.resize(std::strlen(s.c_str()));
  return s;
}

struct Writer {
  hid_t file = -1;
  int64_t written = 0;
  int64_t crash_after = -1;
  std::vector<std::string> paths;

  void dataset(const std::string& path, hid_t mem_type, hid_t file_type, const std::vector<hsize_t>& dims,
               const void* data, size_t bytes) {
    H5Id lcpl(LCTX_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE), path), H5Pclose);
    LCTX_HDF5_CHECK(H5Pset_create_intermediate_group(lcpl, 1), path);
    H5Id space(LCTX_HDF5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), path), H5Sclose);
    H5Id d(LCTX_HDF5_CHECK(H5Dcreate2(file, path.c_str(), file_type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), path),
           H5Dclose);
    if (bytes > 0) LCTX_HDF5_CHECK(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path);
    write_attr_u64s(d, "checksum", {dataset_checksum(kCheckpointFormatVersion, dims, data, bytes)}, true);
    paths.push_back(path);
    if (crash_after >= 0 && ++written >= crash_after) {
      H5Fflush(file, H5F_SCOPE_GLOBAL);
      std::raise(SIGKILL);
    }
  }

  void tensor(const std::string& path, const Tensor& t) {
    LCTX_CHECK(t.dtype() == DType::f32 && t.device().is_cpu() && t.is_contiguous(), "checkpoint: ", path,
               " must be a contiguous f32 CPU tensor, got ", t.str());
    std::vector<hsize_t> dims(t.shape().begin(), t.shape().end());
    dataset(path, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, dims, t.raw(), t.nbytes());
  }
};

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  LCTX_CHECK(fd >= 0, "checkpoint: cannot open ", path, " to fsync: ", std::strerror(errno));
  const int r = ::fsync(fd);
  ::close(fd);
  LCTX_CHECK(r == 0, "checkpoint: fsync ", path, " failed: ", std::strerror(errno));
}

// ---- reading ----------------------------------------------------------------------------------

enum class Elem { f32, u64 };

// What a dataset declares, checked before anything of its size is allocated.
struct DatasetMeta {
  std::string path;
  std::vector<hsize_t> dims;
  size_t bytes = 0;
  uint64_t checksum = 0;
};

enum class ReadMode { state, verify_only };

class Reader {
 public:
  explicit Reader(const std::string& file) : file_(file) {
    std::error_code ec;
    LCTX_CHECK(fs::is_regular_file(file, ec), "checkpoint: ", file, " does not exist");
    file_size_ = fs::file_size(file, ec);
    LCTX_CHECK(!ec, "checkpoint: cannot read the size of ", file, ": ", ec.message());
    LCTX_CHECK(H5Fis_hdf5(file.c_str()) > 0, "checkpoint ", file, " is not a valid HDF5 file (truncated or corrupt)");
    f_ = H5Id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    LCTX_CHECK(f_ >= 0, "checkpoint ", file, " cannot be opened (truncated or corrupt)");
  }

  CheckpointState read(ReadMode mode) {
    CheckpointState st;
    read_attributes(st);
    std::vector<uint64_t> sums;  // attribute_checksums (format 2)
    if (st.format_version >= 2) {
      sums = read_attr_u64s(f_, "attribute_checksums", file_, kNumAttrChecksums);
      const std::vector<uint64_t> got = attribute_checksums(st, {});
      for (size_t i = 0; i + 1 < kNumAttrChecksums; ++i)
        LCTX_CHECK(sums[i] == got[i], "checkpoint ", file_, ": attribute '",
                   i < kNumIntAttrs ? kIntAttrs[i].name : "config",
                   "' does not match its entry in attribute_checksums (stored ", sums[i], ", computed ", got[i],
                   "): the file is corrupt");
    }
    check_ranges(st);
    // Every dataset's metadata, checked against the file before any data is read.
    const std::vector<DatasetMeta> params = scan_group("/params"), m = scan_group("/optimizer/m"),
                                   v = scan_group("/optimizer/v");
    const DatasetMeta rng = scan_dataset("/rng/state", Elem::u64);
    if (st.format_version >= 2) {
      std::vector<std::string> paths;
      for (const auto* g : {&params, &m, &v})
        for (const DatasetMeta& d : *g) paths.push_back(d.path);
      paths.push_back(rng.path);
      const uint64_t got = datasets_checksum(paths);
      LCTX_CHECK(sums.back() == got, "checkpoint ", file_,
                 ": the list of datasets does not match its entry in attribute_checksums (stored ", sums.back(),
                 ", computed ", got, "): a dataset was renamed, added or removed; the file is corrupt");
    }
    match_group(params, m, "/optimizer/m");
    match_group(params, v, "/optimizer/v");
    const uint64_t ranks = static_cast<uint64_t>(st.mesh_dp * st.mesh_sp);
    LCTX_CHECK(rng.dims.size() == 2 && rng.dims[0] == ranks && rng.dims[1] == 2, "checkpoint ", file_,
               ": dataset /rng/state has shape ", dims_str(rng.dims), ", expected [mesh_dp * mesh_sp, 2] = [", ranks,
               ", 2]");
    // The data, each dataset verified against its checksum.
    const bool keep = mode == ReadMode::state;
    st.params = read_group(params, keep, st.format_version);
    st.adam_m = read_group(m, keep, st.format_version);
    st.adam_v = read_group(v, keep, st.format_version);
    st.rng_state.resize(rng.bytes / sizeof(uint64_t));
    read_data(rng, Elem::u64, st.format_version, st.rng_state.data());
    return st;
  }

 private:
  void read_attributes(CheckpointState& st) {
    st.format_version = read_attr_i64(f_, "format_version", file_);
    LCTX_CHECK(st.format_version == 1 || st.format_version == kCheckpointFormatVersion, "checkpoint ", file_,
               ": attribute 'format_version' is ", st.format_version, ", this lctx-train reads 1 and ",
               kCheckpointFormatVersion);
    for (const IntAttr& a : kIntAttrs) st.*a.field = read_attr_i64(f_, a.name, file_);
    st.config_yaml = read_attr_str(f_, "config", file_, file_size_);
  }

  // Every field in its range (for format-1 files, which carry no attribute checksums, the
  // only check).
  void check_ranges(const CheckpointState& st) const {
    const char* why = st.format_version == 1 ? " (a format-1 checkpoint: its attributes carry no checksum)" : "";
    const auto bad = [&](const char* attr, int64_t v, const auto&... expected) {
      LCTX_FAIL("checkpoint ", file_, ": attribute '", attr, "' is ", v, ", expected ", expected..., why);
    };
    if (st.step < 0 || st.step > kMaxStep) bad("step", st.step, "0 <= step <= ", kMaxStep);
    if (st.skipped_steps < 0 || st.skipped_steps > st.step)
      bad("skipped_steps", st.skipped_steps, "0 <= skipped_steps <= step = ", st.step);
    if (st.adam_step != st.step - st.skipped_steps)
      bad("adam_step", st.adam_step, "step - skipped_steps = ", st.step - st.skipped_steps);
    const int64_t c = st.data_consumed_samples;
    if (c < st.step || (st.step <= std::numeric_limits<int64_t>::max() / kMaxBatch && c > st.step * kMaxBatch))
      bad("data_consumed_samples", c, "step * data.batch_size, between ", st.step, " and ", st.step, " * ", kMaxBatch);
    if (st.data_seed < 0) bad("data_seed", st.data_seed, "a seed >= 0");
    const std::initializer_list<std::pair<const char*, int64_t>> degrees = {
        {"mesh_dp", st.mesh_dp}, {"mesh_sp", st.mesh_sp}, {"mesh_ulysses", st.mesh_ulysses}};
    for (const auto& [name, v] : degrees)
      if (v < 1 || v > kMaxDegree) bad(name, v, "a parallel degree in [1, ", kMaxDegree, "]");
    if (st.mesh_sp % st.mesh_ulysses != 0) bad("mesh_ulysses", st.mesh_ulysses, "a divisor of mesh_sp = ", st.mesh_sp);
  }

  DatasetMeta scan_dataset(const std::string& path, Elem elem) {
    const std::string where = file_ + " " + path;
    const htri_t exists = H5Lexists(f_, path.c_str(), H5P_DEFAULT);
    LCTX_CHECK(exists >= 0, "checkpoint ", file_, ": cannot look up dataset ", path, ": the file is corrupt");
    LCTX_CHECK(exists > 0, "checkpoint ", file_, ": dataset ", path, " is missing");
    H5Id d(H5Dopen2(f_, path.c_str(), H5P_DEFAULT), H5Dclose);
    LCTX_CHECK(d >= 0, "checkpoint ", file_, ": dataset ", path, " cannot be opened: the file is corrupt");
    H5Id type(LCTX_HDF5_CHECK(H5Dget_type(d), where), H5Tclose);
    const size_t esize = elem == Elem::f32 ? sizeof(float) : sizeof(uint64_t);
    LCTX_CHECK(H5Tget_class(type) == (elem == Elem::f32 ? H5T_FLOAT : H5T_INTEGER) && H5Tget_size(type) == esize,
               "checkpoint ", file_, ": dataset ", path, " has the wrong element type, expected ",
               elem == Elem::f32 ? "f32" : "u64");
    H5Id space(LCTX_HDF5_CHECK(H5Dget_space(d), where), H5Sclose);
    const int nd = H5Sget_simple_extent_ndims(space);
    const int max_rank = elem == Elem::f32 ? kMaxRank : 2;
    LCTX_CHECK(H5Sget_simple_extent_type(space) == H5S_SIMPLE && nd >= 1 && nd <= max_rank, "checkpoint ", file_,
               ": dataset ", path, " has rank ", nd, ", expected 1 to ", max_rank);
    DatasetMeta m;
    m.path = path;
    m.dims.assign(static_cast<size_t>(nd), 0);
    LCTX_HDF5_CHECK(H5Sget_simple_extent_dims(space, m.dims.data(), nullptr), where);
    // The declared size, overflow-checked, against what the file can hold and what it stores.
    uintmax_t bytes = esize;
    for (hsize_t x : m.dims) {
      LCTX_CHECK(x == 0 || bytes <= file_size_ / x, "checkpoint ", file_, ": dataset ", path, " declares shape ",
                 dims_str(m.dims), ", more than the file's ", file_size_, " bytes: the file is corrupt");
      bytes *= x;
    }
    total_bytes_ += bytes;
    LCTX_CHECK(total_bytes_ <= file_size_, "checkpoint ", file_, ": dataset ", path, " declares shape ",
               dims_str(m.dims), " (", bytes, " bytes), more than the file's ", file_size_,
               " bytes hold: the file is corrupt");
    const hsize_t stored = H5Dget_storage_size(d);
    LCTX_CHECK(stored == bytes, "checkpoint ", file_, ": dataset ", path, " declares shape ", dims_str(m.dims), " (",
               bytes, " bytes) but stores ", stored, " bytes: the file is corrupt");
    m.bytes = static_cast<size_t>(bytes);
    m.checksum = read_attr_u64s(d, "checksum", where, 1)[0];
    return m;
  }

  std::vector<DatasetMeta> scan_group(const std::string& group) {
    const htri_t exists = H5Lexists(f_, group.c_str(), H5P_DEFAULT);
    LCTX_CHECK(exists >= 0, "checkpoint ", file_, ": cannot look up group ", group, ": the file is corrupt");
    LCTX_CHECK(exists > 0, "checkpoint ", file_, ": group ", group, " is missing");
    H5Id g(H5Gopen2(f_, group.c_str(), H5P_DEFAULT), H5Gclose);
    H5G_info_t info;
    LCTX_CHECK(g >= 0 && H5Gget_info(g, &info) >= 0, "checkpoint ", file_, ": group ", group,
               " cannot be opened: the file is corrupt");
    LCTX_CHECK(info.nlinks <= kMaxGroupLinks, "checkpoint ", file_, ": group ", group, " lists ", info.nlinks,
               " entries: the file is corrupt");
    std::vector<DatasetMeta> out;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      // Creation order is not tracked; names come back sorted, the trainer matches by name.
      const ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      LCTX_CHECK(len > 0 && len <= kMaxNameLen, "checkpoint ", file_, ": cannot list ", group, " (entry ", i, ")");
      std::string name(static_cast<size_t>(len) + 1, '\0');
      LCTX_HDF5_CHECK(H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT),
                      file_, " ", group);
      name.resize(static_cast<size_t>(len));
      out.push_back(scan_dataset(group + "/" + name, Elem::f32));
    }
    return out;
  }

  // The optimizer moments in `group` have exactly the parameters' names and shapes.
  void match_group(const std::vector<DatasetMeta>& params, const std::vector<DatasetMeta>& g,
                   const std::string& group) const {
    const auto leaf = [](const DatasetMeta& d) { return d.path.substr(d.path.rfind('/') + 1); };
    LCTX_CHECK(g.size() == params.size(), "checkpoint ", file_, ": group ", group, " holds ", g.size(),
               " datasets, /params holds ", params.size());
    for (size_t i = 0; i < g.size(); ++i) {  // both sorted by name
      LCTX_CHECK(leaf(g[i]) == leaf(params[i]), "checkpoint ", file_, ": dataset ", g[i].path,
                 " does not match a parameter (expected ", group, "/", leaf(params[i]), ")");
      LCTX_CHECK(g[i].dims == params[i].dims, "checkpoint ", file_, ": dataset ", g[i].path, " has shape ",
                 dims_str(g[i].dims), ", but ", params[i].path, " has ", dims_str(params[i].dims));
    }
  }

  void read_data(const DatasetMeta& m, Elem elem, int64_t version, void* out) const {
    H5Id d(LCTX_HDF5_CHECK(H5Dopen2(f_, m.path.c_str(), H5P_DEFAULT), file_, " ", m.path), H5Dclose);
    if (m.bytes > 0)
      LCTX_HDF5_CHECK(H5Dread(d, elem == Elem::f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL,
                              H5P_DEFAULT, out),
                      "reading ", file_, " ", m.path);
    const uint64_t got = dataset_checksum(version, m.dims, out, m.bytes);
    LCTX_CHECK(got == m.checksum, "checkpoint ", file_, ": checksum mismatch in dataset ", m.path, " (stored ",
               m.checksum, ", computed ", got, "): the file is corrupt");
  }

  std::vector<std::pair<std::string, Tensor>> read_group(const std::vector<DatasetMeta>& metas, bool keep,
                                                         int64_t version) const {
    std::vector<std::pair<std::string, Tensor>> out;
    for (const DatasetMeta& m : metas) {
      Tensor t = Tensor::empty(Shape(m.dims.begin(), m.dims.end()), DType::f32);
      read_data(m, Elem::f32, version, t.raw());
      if (keep) out.emplace_back(m.path.substr(m.path.rfind('/') + 1), std::move(t));
    }
    return out;
  }

  std::string file_;
  uintmax_t file_size_ = 0;
  uintmax_t total_bytes_ = 0;  // declared by the datasets scanned so far
  H5Id f_;
};

// ---- which files are known good ----------------------------------------------------------------

// Files this process wrote or verified, with their size and modification time then: retention
// does not read them again while both are unchanged. Guarded by hdf5_mutex().
struct Stamp {
  uintmax_t size;
  fs::file_time_type mtime;
  bool operator==(const Stamp&) const = default;
};
std::map<std::string, Stamp>& verified_files() {
  static std::map<std::string, Stamp> m;
  return m;
}
std::string file_key(const std::string& f) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(f, ec);
  return ec ? f : p.string();
}
std::optional<Stamp> stamp_of(const std::string& f) {
  std::error_code ec1, ec2;
  Stamp s{fs::file_size(f, ec1), fs::last_write_time(f, ec2)};
  if (ec1 || ec2) return std::nullopt;
  return s;
}
void remember_verified(const std::string& f) {
  if (const auto s = stamp_of(f)) verified_files()[file_key(f)] = *s;
}

// Reads and verifies; the caller holds hdf5_mutex().
CheckpointState read_locked(const std::string& file, ReadMode mode) {
  const Hdf5Quiet quiet;
  CheckpointState st;
  {
    Reader r(file);
    st = r.read(mode);
  }
  remember_verified(file);
  return st;
}

bool is_verified(const std::string& f, std::string* why) {
  const auto s = stamp_of(f);
  const auto it = verified_files().find(file_key(f));
  if (s && it != verified_files().end() && it->second == *s) return true;
  try {
    read_locked(f, ReadMode::verify_only);
    return true;
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
}

// Checkpoint files of dir with their steps, newest first.
std::vector<std::pair<int64_t, std::string>> list_steps(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  static const std::regex re(R"(step-(\d{1,18})\.h5)");
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (e.is_regular_file(ec) && std::regex_match(name, m, re)) found.emplace_back(std::stoll(m[1]), e.path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// Moves `file` into `<dir>/<sub>/` under a name not taken yet; returns the new path.
std::string set_aside(const std::string& dir, const std::string& file, const char* sub) {
  const fs::path to_dir = fs::path(dir) / sub;
  std::error_code ec;
  fs::create_directories(to_dir, ec);
  LCTX_CHECK(!ec, "checkpoint: cannot create directory ", to_dir.string(), ": ", ec.message());
  const std::string name = fs::path(file).filename().string();
  fs::path to = to_dir / name;
  for (int i = 2; fs::exists(to, ec); ++i) to = to_dir / (name + "." + std::to_string(i));
  fs::rename(file, to, ec);
  LCTX_CHECK(!ec, "checkpoint: cannot move ", file, " aside to ", to.string(), ": ", ec.message());
  return to.string();
}

void note(std::vector<std::string>* notes, const std::string& s) {
  std::cerr << "lctx-train: " << s << "\n";
  if (notes) notes->push_back(s);
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld.h5", static_cast<long long>(step));
  return (fs::path(dir) / buf).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& f : list_steps(dir)) out.push_back(std::move(f.second));
  return out;
}

void save_checkpoint(const std::string& dir, const CheckpointState& st, int64_t keep, std::vector<std::string>* notes) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  const Hdf5Quiet quiet;
  std::error_code ec;
  fs::create_directories(dir, ec);
  LCTX_CHECK(!ec, "checkpoint: cannot create directory ", dir, ": ", ec.message());
  const std::string final_path = checkpoint_path(dir, st.step);
  const std::string tmp = final_path + ".tmp";
  fs::remove(tmp, ec);
  {
    // The HDF5 1.8 file format (superblock and object headers version 2): HDF5 checksums all
    // metadata itself and rejects a corrupt header before parsing it.
    H5Id fapl(LCTX_HDF5_CHECK(H5Pcreate(H5P_FILE_ACCESS), tmp), H5Pclose);
    LCTX_HDF5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST), tmp);
    H5Id file(LCTX_HDF5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "creating ", tmp), H5Fclose);
    Writer w;
    w.file = file;
    if (const char* c = std::getenv(kCrashEnv)) w.crash_after = std::atoll(c);
    CheckpointState attrs;  // the root attributes as written (format_version: this one)
    attrs.format_version = kCheckpointFormatVersion;
    for (const IntAttr& a : kIntAttrs)
      if (a.field != &CheckpointState::format_version) attrs.*a.field = st.*a.field;
    attrs.config_yaml = st.config_yaml;
    for (const IntAttr& a : kIntAttrs) write_attr_i64(file, a.name, attrs.*a.field);
    write_attr_str(file, "config", st.config_yaml);
    for (const auto& [n, t] : st.params) w.tensor("/params/" + n, t);
    for (const auto& [n, t] : st.adam_m) w.tensor("/optimizer/m/" + n, t);
    for (const auto& [n, t] : st.adam_v) w.tensor("/optimizer/v/" + n, t);
    LCTX_CHECK(st.rng_state.size() % 2 == 0, "checkpoint: rng_state must hold (seed, offset) pairs");
    w.dataset("/rng/state", H5T_NATIVE_UINT64, H5T_STD_U64LE, {st.rng_state.size() / 2, 2}, st.rng_state.data(),
              st.rng_state.size() * sizeof(uint64_t));
    write_attr_u64s(file, "attribute_checksums", attribute_checksums(attrs, w.paths), false);
    file.close();
  }
  fsync_path(tmp, false);
  // Files at this step or later are an abandoned future (or corrupt): set aside, never counted.
  const auto before = list_steps(dir);
  const std::string s = std::to_string(st.step);
  for (const auto& [step, f] : before)
    if (step >= st.step)
      note(notes, "warning: checkpoint " + f + (step > st.step ? " is newer than" : " is replaced by") + " step " + s +
                      " just written (an abandoned future of a resumed run, or a corrupt file); moved to " +
                      set_aside(dir, f, kAbandonedDir));
  fs::rename(tmp, final_path, ec);
  LCTX_CHECK(!ec, "checkpoint: rename ", tmp, " -> ", final_path, " failed: ", ec.message());
  fsync_path(dir, true);
  remember_verified(final_path);
  // Retention: this one and the newest keep - 1 verified older ones stay.
  int64_t kept = 1;
  for (const auto& [step, f] : before) {
    if (step >= st.step) continue;
    std::string why;
    if (kept >= keep) {
      fs::remove(f, ec);
      verified_files().erase(file_key(f));
    } else if (is_verified(f, &why)) {
      ++kept;
    } else {
      note(notes,
           "warning: checkpoint " + f + " does not verify (" + why + "); moved to " + set_aside(dir, f, kCorruptDir));
    }
  }
  fsync_path(dir, true);
}

CheckpointState load_checkpoint(const std::string& file) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  return read_locked(file, ReadMode::state);
}

std::string find_latest_valid(const std::string& dir, std::vector<std::string>* warnings, CheckpointState* loaded) {
  for (const auto& f : list_checkpoints(dir)) {
    try {
      CheckpointState st = load_checkpoint(f);
      if (loaded) *loaded = std::move(st);
      return f;
    } catch (const Error& e) {
      const std::string w = std::string("warning: skipping checkpoint ") + f + ": " + e.what();
      std::cerr << "lctx-train: " << w << "\n";
      if (warnings) warnings->push_back(w);
    }
  }
  return {};
}

}  // namespace lctx::train
