#include "trainers/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
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

namespace {

uint64_t fnv1a(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

void write_attr_i64(hid_t obj, const char* name, int64_t v) {
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  LCTX_HDF5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v), name);
}

void write_attr_u64(hid_t obj, const char* name, uint64_t v) {
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  LCTX_HDF5_CHECK(H5Awrite(a, H5T_NATIVE_UINT64, &v), name);
}

void write_attr_str(hid_t obj, const char* name, const std::string& v) {
  H5Id type(LCTX_HDF5_CHECK(H5Tcopy(H5T_C_S1), name), H5Tclose);
  LCTX_HDF5_CHECK(H5Tset_size(type, std::max<size_t>(v.size(), 1)), name);
  LCTX_HDF5_CHECK(H5Tset_strpad(type, H5T_STR_NULLPAD), name);
  H5Id space(LCTX_HDF5_CHECK(H5Screate(H5S_SCALAR), name), H5Sclose);
  H5Id a(LCTX_HDF5_CHECK(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), name), H5Aclose);
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  LCTX_HDF5_CHECK(H5Awrite(a, type, buf.data()), name);
}

// An int64_t or uint64_t scalar attribute.
template <class T>
T read_attr(hid_t obj, const char* name, const std::string& file) {
  static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, uint64_t>);
  LCTX_CHECK(H5Aexists(obj, name) > 0, "checkpoint ", file, ": attribute '", name, "' is missing");
  H5Id a(LCTX_HDF5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), file, " ", name), H5Aclose);
  T v = 0;
  LCTX_HDF5_CHECK(H5Aread(a, std::is_signed_v<T> ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64, &v), file, " ", name);
  return v;
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& file) {
  LCTX_CHECK(H5Aexists(obj, name) > 0, "checkpoint ", file, ": attribute '", name, "' is missing");
  H5Id a(LCTX_HDF5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), file, " ", name), H5Aclose);
  H5Id type(LCTX_HDF5_CHECK(H5Aget_type(a), file), H5Tclose);
  LCTX_CHECK(H5Tget_class(type) == H5T_STRING && !H5Tis_variable_str(type), "checkpoint ", file, ": attribute '", name,
             "' is not a fixed-length string");
  std::string s(H5Tget_size(type), '\0');
  LCTX_HDF5_CHECK(H5Aread(a, type, s.data()), file, " ", name);
  s.resize(std::strlen(s.c_str()));
  return s;
}

struct Writer {
  hid_t file;
  int64_t written = 0;
  int64_t crash_after = -1;

  void dataset(const std::string& path, hid_t mem_type, hid_t file_type, const std::vector<hsize_t>& dims,
               const void* data, size_t bytes) {
    H5Id lcpl(LCTX_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE), path), H5Pclose);
    LCTX_HDF5_CHECK(H5Pset_create_intermediate_group(lcpl, 1), path);
    H5Id space(LCTX_HDF5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), path), H5Sclose);
    H5Id d(LCTX_HDF5_CHECK(H5Dcreate2(file, path.c_str(), file_type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), path),
           H5Dclose);
    if (bytes > 0) LCTX_HDF5_CHECK(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path);
    write_attr_u64(d, "checksum", fnv1a(data, bytes));
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

// Reads dataset `path` (f32 or u64 in `mem_type`), verifying its checksum.
template <class T>
std::vector<T> read_dataset(hid_t file, const std::string& path, hid_t mem_type, const std::string& fname,
                            std::vector<hsize_t>& dims) {
  LCTX_CHECK(H5Lexists(file, path.c_str(), H5P_DEFAULT) > 0, "checkpoint ", fname, ": dataset ", path, " is missing");
  H5Id d(LCTX_HDF5_CHECK(H5Dopen2(file, path.c_str(), H5P_DEFAULT), fname, " ", path), H5Dclose);
  H5Id space(LCTX_HDF5_CHECK(H5Dget_space(d), fname, " ", path), H5Sclose);
  const int nd = H5Sget_simple_extent_ndims(space);
  LCTX_CHECK(nd >= 0, "checkpoint ", fname, ": bad dataspace for ", path);
  dims.assign(nd, 0);
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  size_t n = 1;
  for (hsize_t x : dims) n *= x;
  std::vector<T> v(n);
  if (n > 0) LCTX_HDF5_CHECK(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "reading ", fname, " ", path);
  const uint64_t want = read_attr<uint64_t>(d, "checksum", fname + " " + path);
  const uint64_t got = fnv1a(v.data(), n * sizeof(T));
  LCTX_CHECK(want == got, "checkpoint ", fname, ": checksum mismatch in dataset ", path, " (stored ", want, ", computed ", got,
             "): the file is corrupt");
  return v;
}

std::vector<std::pair<std::string, Tensor>> read_group(hid_t file, const std::string& group, const std::string& fname) {
  LCTX_CHECK(H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0, "checkpoint ", fname, ": group ", group, " is missing");
  H5Id g(LCTX_HDF5_CHECK(H5Gopen2(file, group.c_str(), H5P_DEFAULT), fname, " ", group), H5Gclose);
  H5G_info_t info;
  LCTX_HDF5_CHECK(H5Gget_info(g, &info), fname, " ", group);
  std::vector<std::pair<std::string, Tensor>> out;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    // Creation order is not tracked; names come back sorted, the caller matches by name.
    const ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    LCTX_CHECK(len >= 0, "checkpoint ", fname, ": cannot list ", group);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    std::vector<hsize_t> dims;
    auto v = read_dataset<float>(file, group + "/" + name, H5T_NATIVE_FLOAT, fname, dims);
    Shape shape(dims.begin(), dims.end());
    Tensor t = Tensor::empty(shape, DType::f32);
    if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
    out.emplace_back(name, std::move(t));
  }
  return out;
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld.h5", static_cast<long long>(step));
  return (fs::path(dir) / buf).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  static const std::regex re(R"(step-(\d+)\.h5)");
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && std::regex_match(name, m, re)) found.emplace_back(std::stoll(m[1]), e.path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

void save_checkpoint(const std::string& dir, const CheckpointState& st, int64_t keep) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  const Hdf5Quiet quiet;
  std::error_code ec;
  fs::create_directories(dir, ec);
  LCTX_CHECK(!ec, "checkpoint: cannot create directory ", dir, ": ", ec.message());
  const std::string final_path = checkpoint_path(dir, st.step);
  const std::string tmp = final_path + ".tmp";
  fs::remove(tmp, ec);
  {
    H5Id file(LCTX_HDF5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "creating ", tmp), H5Fclose);
    Writer w{file};
    if (const char* c = std::getenv(kCrashEnv)) w.crash_after = std::atoll(c);
    write_attr_i64(file, "format_version", kCheckpointFormatVersion);
    write_attr_i64(file, "step", st.step);
    write_attr_i64(file, "adam_step", st.adam_step);
    write_attr_i64(file, "mesh_dp", st.mesh_dp);
    write_attr_i64(file, "mesh_sp", st.mesh_sp);
    write_attr_i64(file, "mesh_ulysses", st.mesh_ulysses);
    write_attr_i64(file, "data_consumed_samples", st.data_consumed_samples);
    write_attr_i64(file, "data_seed", st.data_seed);
    write_attr_i64(file, "skipped_steps", st.skipped_steps);
    write_attr_str(file, "config", st.config_yaml);
    for (const auto& [n, t] : st.params) w.tensor("/params/" + n, t);
    for (const auto& [n, t] : st.adam_m) w.tensor("/optimizer/m/" + n, t);
    for (const auto& [n, t] : st.adam_v) w.tensor("/optimizer/v/" + n, t);
    LCTX_CHECK(st.rng_state.size() % 2 == 0, "checkpoint: rng_state must hold (seed, offset) pairs");
    w.dataset("/rng/state", H5T_NATIVE_UINT64, H5T_STD_U64LE, {st.rng_state.size() / 2, 2}, st.rng_state.data(),
              st.rng_state.size() * sizeof(uint64_t));
    file.close();
  }
  fsync_path(tmp, false);
  fs::rename(tmp, final_path, ec);
  LCTX_CHECK(!ec, "checkpoint: rename ", tmp, " -> ", final_path, " failed: ", ec.message());
  fsync_path(dir, true);
  // Retention: newest `keep` stay.
  const auto all = list_checkpoints(dir);
  for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i) fs::remove(all[i], ec);
}

CheckpointState load_checkpoint(const std::string& file) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  const Hdf5Quiet quiet;
  std::error_code ec;
  LCTX_CHECK(fs::is_regular_file(file, ec), "checkpoint: ", file, " does not exist");
  LCTX_CHECK(H5Fis_hdf5(file.c_str()) > 0, "checkpoint ", file, " is not a valid HDF5 file (truncated or corrupt)");
  H5Id f(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  LCTX_CHECK(f >= 0, "checkpoint ", file, " cannot be opened (truncated or corrupt)");
  CheckpointState st;
  const int64_t version = read_attr<int64_t>(f, "format_version", file);
  LCTX_CHECK(version == kCheckpointFormatVersion, "checkpoint ", file, " has format_version ", version, ", this lctx-train reads ",
             kCheckpointFormatVersion);
  st.step = read_attr<int64_t>(f, "step", file);
  st.adam_step = read_attr<int64_t>(f, "adam_step", file);
  st.mesh_dp = read_attr<int64_t>(f, "mesh_dp", file);
  st.mesh_sp = read_attr<int64_t>(f, "mesh_sp", file);
  st.mesh_ulysses = read_attr<int64_t>(f, "mesh_ulysses", file);
  st.data_consumed_samples = read_attr<int64_t>(f, "data_consumed_samples", file);
  st.data_seed = read_attr<int64_t>(f, "data_seed", file);
  st.skipped_steps = read_attr<int64_t>(f, "skipped_steps", file);
  st.config_yaml = read_attr_str(f, "config", file);
  st.params = read_group(f, "/params", file);
  st.adam_m = read_group(f, "/optimizer/m", file);
  st.adam_v = read_group(f, "/optimizer/v", file);
  std::vector<hsize_t> dims;
  st.rng_state = read_dataset<uint64_t>(f, "/rng/state", H5T_NATIVE_UINT64, file, dims);
  LCTX_CHECK(dims.size() == 2 && dims[1] == 2, "checkpoint ", file, ": /rng/state must be [world, 2]");
  return st;
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
