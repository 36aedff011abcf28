// Data files for the trainer's data tests and the robustness suite: a 1-D HDF5 dataset of token
// ids (as a user's pipeline would write it).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lctx::test {

// Writes `ids` to dataset `name` of a new HDF5 file at `path`, stored as `file_type`.
inline void write_hdf5_ids(const std::string& path, const std::string& name, const std::vector<int32_t>& ids,
                           hid_t file_type = H5T_STD_I32LE) {
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const hsize_t n = ids.size();
  const hid_t sp = H5Screate_simple(1, &n, nullptr);
  const hid_t ds = H5Dcreate2(f, name.c_str(), file_type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids.data());
  H5Dclose(ds);
  H5Sclose(sp);
  H5Fclose(f);
}

}  // namespace lctx::test
