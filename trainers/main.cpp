// lctx-train: trains a decoder-only LM from a YAML config (README "Configuration (lctx-train)").
//   lctx-train CONFIG.yaml [--out DIR] [--resume | --resume=auto|PATH] [--set key.path=value]...
//   lctx-train CONFIG.yaml --print-config     the resolved config, defaults included
//   lctx-train --print-options                markdown table of every option
//   lctx-train CONFIG.yaml [--resume=auto|PATH] [--set ...] --eval-batch OUT.h5
//       evaluates the first batch of the eval split (samples [0, data.batch_size)) on the CPU in
//       f32 on one rank, with the checkpoint's weights (without --resume: the initial weights of
//       train.seed), and writes the batch and lctx's loss to OUT.h5 (trainers/eval_batch.h), so
//       that another implementation (launch/export_torch.py) can be compared on the same tokens.
#include <cstring>
#include <iostream>
#include <new>
#include <string>
#include <system_error>
#include <vector>

#include "core/error.h"
#include "trainers/config.h"
#include "trainers/eval_batch.h"
#include "trainers/train.h"

namespace {

int usage(const char* msg) {
  if (msg) std::cerr << "lctx-train: " << msg << "\n";
  std::cerr << "usage: lctx-train CONFIG.yaml [--out DIR] [--resume | --resume=auto|PATH] [--set key.path=value]...\n"
               "       lctx-train CONFIG.yaml --print-config\n"
               "       lctx-train --print-options\n"
               "       lctx-train CONFIG.yaml [--resume=auto|PATH] [--set ...] --eval-batch OUT.h5\n"
               "           evaluate the first eval batch (samples 0..data.batch_size-1 of the eval split) on the\n"
               "           CPU in f32 on one rank with the checkpoint's weights (no --resume: the initial ones)\n"
               "           and write to OUT.h5: /inputs, /targets (-1 = not scored) i32 [B, S], /positions i32 [S]\n"
               "           ([B, S] with data.reset_positions), /losses f32 [B, S] (per token), /doc_ids i32 [B, S]\n"
               "           (packed documents), root attributes loss (mean over scored targets), loss_sum, scored, correct, step,\n"
               "           checkpoint, config (resolved YAML). No training, no run directory.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> overrides;
  bool print_config = false;
  std::string eval_batch_out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--print-options") {
        std::cout << lctx::train::options_markdown();
        return 0;
      } else if (a == "--print-config") {
        print_config = true;
      } else if (a == "--out") {
        overrides.push_back("logging.out_dir=" + value("--out"));
      } else if (a == "--resume") {
        overrides.push_back("checkpoint.resume=auto");
      } else if (a.rfind("--resume=", 0) == 0) {
        overrides.push_back("checkpoint.resume=" + a.substr(9));
      } else if (a == "--eval-batch") {
        eval_batch_out = value("--eval-batch");
        if (eval_batch_out.empty()) return usage("--eval-batch needs a value");
      } else if (a.rfind("--eval-batch=", 0) == 0) {
        eval_batch_out = a.substr(13);
        if (eval_batch_out.empty()) return usage("--eval-batch needs a value");
      } else if (a == "--set") {
        overrides.push_back(value("--set"));
      } else if (a.rfind("--set=", 0) == 0) {
        overrides.push_back(a.substr(6));
      } else if (a == "-h" || a == "--help") {
        usage(nullptr);
        return 0;
      } else if (a.rfind("-", 0) == 0) {
        return usage(("unknown option " + a).c_str());
      } else if (config_path.empty()) {
        config_path = a;
      } else {
        return usage(("unexpected argument " + a).c_str());
      }
    } catch (const std::invalid_argument& e) {
      return usage(e.what());
    }
  }
  if (config_path.empty()) return usage("no config file given");
  try {
    if (!eval_batch_out.empty()) {
      lctx::train::dump_eval_batch(config_path, overrides, eval_batch_out);
      return 0;
    }
    const lctx::train::Config cfg = lctx::train::load_config(config_path, overrides);
    if (print_config) {
      std::cout << lctx::train::to_yaml(cfg);
      return 0;
    }
    lctx::train::install_signal_handlers();
    const lctx::train::RunResult r = lctx::train::run_training(cfg);
    if (r.stopped_by_signal) std::cout << "lctx-train: stopped by signal at step " << r.final_step << "\n";
    return 0;
  } catch (const lctx::Error& e) {
    std::cerr << "lctx-train: error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "lctx-train: error: out of memory; the sizes that drive it are data.seq_len, data.batch_size, "
                 "model.dim, model.ffn_dim, model.n_layers, model.vocab_size and parallel.simulate (ranks in one "
                 "process)\n";
    return 1;
  } catch (const std::system_error& e) {
    std::cerr << "lctx-train: error: the system refused a resource (" << e.code().message()
              << "): too many threads or files? (parallel.simulate ranks x train.threads threads)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "lctx-train: error: " << e.what() << " [config " << config_path << "]\n";
    return 1;
  }
}
