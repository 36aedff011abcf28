// Corrupting checkpoint files as a hostile user or a bad disk would, for the checkpoint tests
// (tests/trainers/test_checkpoint.cpp) and the robustness suite (tests/robustness): raw bytes,
// dataset dims found in the HDF5 dataspace messages, root attributes set or bit-flipped through
// the HDF5 API (as h5py would), and a writer of format-1 files (before attribute checksums).
#pragma once
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "trainers/checkpoint.h"

namespace lctx::test::ckpt {

inline std::string read_bytes(const std::string& f) {
  std::ifstream in(f, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void write_u64_at(const std::string& f, size_t offset, uint64_t v) {
  std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(static_cast<std::streamoff>(offset));
  io.write(reinterpret_cast<const char*>(&v), sizeof v);
}

// Offsets of the dims in every dataspace message of shape `dims` with max dims: version 1
// (the earliest layout: 01 rank 01 00 00000000) or 2 (the 1.8 layout: 02 rank 01 01), then the
// dims, then the max dims.
inline std::vector<size_t> dims_offsets(const std::string& bytes, const std::vector<uint64_t>& dims) {
  std::string tail;
  for (int copy = 0; copy < 2; ++copy)
    for (uint64_t d : dims) tail.append(reinterpret_cast<const char*>(&d), sizeof d);
  const char rank = static_cast<char>(dims.size());
  std::vector<size_t> out;
  for (const std::string& head : {std::string{1, rank, 1, 0, 0, 0, 0, 0}, std::string{2, rank, 1, 1}}) {
    const std::string pat = head + tail;
    for (size_t at = bytes.find(pat); at != std::string::npos; at = bytes.find(pat, at + 1))
      out.push_back(at + head.size());
  }
  return out;
}

// An HDF5 file opened for writing.
struct H5Rw {
  explicit H5Rw(const std::string& f) : id(H5Fopen(f.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)) {}
  ~H5Rw() { H5Fclose(id); }
  hid_t id;
};

inline int64_t get_attr_i64(const std::string& f, const char* name) {
  H5Rw file(f);
  const hid_t a = H5Aopen(file.id, name, H5P_DEFAULT);
  int64_t v = 0;
  H5Aread(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
  return v;
}

inline void set_attr_i64(const std::string& f, const char* name, int64_t v) {
  H5Rw file(f);
  const hid_t a = H5Aopen(file.id, name, H5P_DEFAULT);
  ASSERT_GE(a, 0) << name;
  EXPECT_GE(H5Awrite(a, H5T_NATIVE_INT64, &v), 0) << name;
  H5Aclose(a);
}

// Flips bit `bit` of element `i` of an integer attribute (of the root, or of dataset `obj`).
inline void flip_attr_bit(const std::string& f, const char* obj, const char* name, size_t i, int bit) {
  H5Rw file(f);
  const hid_t o = H5Oopen(file.id, obj, H5P_DEFAULT);  // (H5Aopen_by_name'd attributes cannot be written)
  const hid_t a = H5Aopen(o, name, H5P_DEFAULT);
  ASSERT_GE(a, 0) << name;
  const hid_t space = H5Aget_space(a);
  std::vector<uint64_t> v(static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
  H5Sclose(space);
  H5Aread(a, H5T_NATIVE_UINT64, v.data());
  v.at(i) ^= uint64_t{1} << bit;
  EXPECT_GE(H5Awrite(a, H5T_NATIVE_UINT64, v.data()), 0) << name;
  H5Aclose(a);
  H5Oclose(o);
}

inline constexpr const char* kIntAttrNames[] = {"format_version", "step",    "adam_step",
                                         "mesh_dp",        "mesh_sp", "mesh_ulysses",
                                         "data_consumed_samples", "data_seed", "skipped_steps"};

// Writes `st` as format 1 did (lctx-train before attribute checksums): the earliest HDF5 layout
// (no metadata checksums), no attribute_checksums, each dataset's checksum the FNV-1a 64 of its
// bytes only.
inline void write_format1(const std::string& path, const train::CheckpointState& st) {
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0) << path;
  const auto attr = [](hid_t obj, const char* name, hid_t type, const void* v) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, v);
    H5Aclose(a);
    H5Sclose(space);
  };
  const int64_t ints[] = {1,          st.step,          st.adam_step,
                          st.mesh_dp, st.mesh_sp,       st.mesh_ulysses,
                          st.data_consumed_samples, st.data_seed, st.skipped_steps};
  for (size_t i = 0; i < std::size(ints); ++i) attr(f, kIntAttrNames[i], H5T_NATIVE_INT64, &ints[i]);
  const hid_t str = H5Tcopy(H5T_C_S1);
  H5Tset_size(str, std::max<size_t>(st.config_yaml.size(), 1));
  H5Tset_strpad(str, H5T_STR_NULLPAD);
  attr(f, "config", str, st.config_yaml.c_str());
  H5Tclose(str);
  const auto dataset = [&](const std::string& p, hid_t type, const std::vector<hsize_t>& dims, const void* data,
                           size_t bytes) {
    const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t d = H5Dcreate2(f, p.c_str(), type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; ++i) h = (h ^ static_cast<const uint8_t*>(data)[i]) * 1099511628211ull;
    attr(d, "checksum", H5T_NATIVE_UINT64, &h);
    H5Dclose(d);
    H5Sclose(space);
    H5Pclose(lcpl);
  };
  for (const auto& [group, tensors] :
       {std::pair{"/params/", &st.params}, {"/optimizer/m/", &st.adam_m}, {"/optimizer/v/", &st.adam_v}})
    for (const auto& [n, t] : *tensors)
      dataset(group + n, H5T_NATIVE_FLOAT, std::vector<hsize_t>(t.shape().begin(), t.shape().end()), t.raw(),
              t.nbytes());
  dataset("/rng/state", H5T_NATIVE_UINT64, {st.rng_state.size() / 2, 2}, st.rng_state.data(),
          st.rng_state.size() * sizeof(uint64_t));
  H5Fclose(f);
}

inline void write_bytes(const std::string& f, const std::string& bytes) {
  std::ofstream(f, std::ios::binary | std::ios::trunc) << bytes;
}

// Sets the integer root attribute `name` (through the HDF5 API, as h5py would); false when the
// file or the attribute cannot be opened (a corrupted file, say).
inline bool set_root_attr(const std::string& f, const char* name, int64_t v) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fopen(f.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return false;
  const hid_t a = H5Aopen(file, name, H5P_DEFAULT);
  const bool ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0;
  if (a >= 0) H5Aclose(a);
  H5Fclose(file);
  return ok;
}

}  // namespace lctx::test::ckpt
