#include "trainers/eval_batch.h"

#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <mutex>

#include "core/error.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "dist/sim_comm.h"
#include "trainers/checkpoint.h"
#include "trainers/checkpoint_match.h"
#include "trainers/data.h"
#include "trainers/hdf5_check.h"
#include "trainers/model.h"

namespace lctx::train {

namespace {

// A CPU tensor as dataset `name`, stored as file_type (little-endian), from memory of mem_type.
void write_tensor(hid_t file, const char* name, const Tensor& t, hid_t file_type, hid_t mem_type) {
  std::vector<hsize_t> dims;
  for (int64_t d : t.shape()) dims.push_back(static_cast<hsize_t>(d));
  const Tensor c = t.contiguous();
  H5Id space(LCTX_HDF5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), name), H5Sclose);
  H5Id d(LCTX_HDF5_CHECK(H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), name),
         H5Dclose);
  LCTX_HDF5_CHECK(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw()), name);
}
void write_i32(hid_t file, const char* name, const Tensor& t) {
  write_tensor(file, name, t, H5T_STD_I32LE, H5T_NATIVE_INT32);
}
void write_f32(hid_t file, const char* name, const Tensor& t) {
  write_tensor(file, name, t, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
}

// The checkpoint named by checkpoint.resume (auto: the newest valid one of the run directory),
// checked against the config's model-shaping keys, copied into the model. Returns its file and
// step ("" and 0 for resume: none; auto without a valid checkpoint is an error).
std::pair<std::string, int64_t> load_weights(const Config& cfg, Model& model) {
  const std::string& r = cfg.checkpoint.resume;
  if (r == "none") return {"", 0};
  CheckpointState st;
  std::string file = r;
  if (r == "auto") {
    const std::string dir = (std::filesystem::path(cfg.logging.out_dir) / "checkpoints").string();
    file = find_latest_valid(dir, nullptr, &st);
    LCTX_CHECK(!file.empty(), "--eval-batch: resume = auto but ", dir, " holds no valid checkpoint");
  } else {
    st = load_checkpoint(file);
  }
  check_model_shaping(st, file, cfg);
  LCTX_CHECK(st.params.size() == model.params().size(), "--eval-batch: checkpoint ", file, " has ", st.params.size(),
             " parameters, the model has ", model.params().size());
  for (mixers::Param& p : model.params()) p.master.copy_from(matching_tensor(st.params, p, "parameter", file));
  model.sync_compute_weights();
  return {file, st.step};
}

// --eval-batch: one forward of the first eval batch through lctx's Model on one CPU rank.
}  // namespace

void dump_eval_batch(const std::string& config_path, std::vector<std::string> overrides, const std::string& out) {
  // One rank on the CPU in f32, whatever the run used (parallel.* and the SP strategy do not
  // change what is computed, only where).
  for (const char* o : {"train.device=cpu", "model.dtype=f32", "parallel.dp=1", "parallel.sp=1", "parallel.ulysses=1",
                        "parallel.simulate=0", "parallel.backend=auto", "mixer.softmax.sp=auto"})
    overrides.push_back(o);
  const Config cfg = load_config(config_path, overrides);
  validate_world(cfg, 1);
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, dist::MeshShape{});
    const dist::LayoutKind kind =
        resolved_layout(cfg) == "contiguous" ? dist::LayoutKind::contiguous : dist::LayoutKind::zigzag;
    const dist::Layout layout(kind, cfg.data.seq_len, 1, 1);
    Model model(cfg, Device::cpu(), mesh, layout);
    model.init(static_cast<uint64_t>(cfg.train.seed));
    const auto [file, step] = load_weights(cfg, model);
    const auto data = make_dataset(cfg.data, cfg.model.vocab_size, DataChecks{.eval_batches = 1});
    const Shard shard{.dp_rank = 0, .dp = 1, .positions = layout.positions(0)};
    const Batch b = make_batch(*data, cfg.data, Split::eval, 0, shard);
    const StepStats st = model.evaluate(b);
    const double loss = st.scored > 0 ? st.loss_sum / st.scored : 0.0;

    const int64_t scored = static_cast<int64_t>(st.scored), correct = static_cast<int64_t>(st.correct);
    {
      const std::lock_guard<std::mutex> lock(hdf5_mutex());
      const Hdf5Quiet quiet;
      H5Id f(LCTX_HDF5_CHECK(H5Fcreate(out.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "--eval-batch: creating ",
                             out),
             H5Fclose);
      write_i32(f, "inputs", b.inputs);
      write_i32(f, "targets", b.targets);
      write_i32(f, "positions", b.positions);
      if (b.doc_ids.defined()) write_i32(f, "doc_ids", b.doc_ids);
      write_f32(f, "losses", model.token_losses());
      write_attr_f64(f, "loss", loss);
      write_attr_f64(f, "loss_sum", st.loss_sum);
      write_attr_i64(f, "scored", scored);
      write_attr_i64(f, "correct", correct);
      write_attr_i64(f, "step", step);
      write_attr_str(f, "checkpoint", file);
      write_attr_str(f, "config", to_yaml(cfg));
      f.close();  // H5Fclose flushes: its failure is an error
    }
    std::cout << "lctx-train: eval batch of " << b.inputs.size(0) << " x " << b.inputs.size(1) << " tokens ("
              << scored << " scored), " << (file.empty() ? "initial weights" : file) << ": loss "
              << std::setprecision(9) << loss << " -> " << out << "\n";
  });
}

}  // namespace lctx::train
