// lctx-train configuration: the typed Config every part of the trainer reads, parsed from YAML
// with a strict schema. Every option has one entry in a schema table (path, type, default,
// range, doc): parsing, `--print-config`, the README option table and the error messages all
// come from that table, so an unknown key, a wrong type or an out-of-range value is reported
// with its full path ("model.n_heads") and what was expected before any work starts.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace lctx::train {

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t dim = 64;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0: same as n_heads
  int64_t ffn_dim = 0;     // 0: 8/3 * dim rounded up to a multiple of 16
  int64_t mlp_chunk = 65536;  // tokens per MLP chunk in recomputed layers
  std::string position = "rope";  // rope | alibi
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  bool tied_embeddings = true;
  std::string dtype = "auto";  // auto | f32 | bf16 (compute dtype; master weights are f32)
  // Layers whose activations are recomputed in backward: YAML `none`, `all` or a list of indices.
  std::vector<int64_t> checkpoint_layers;
  bool checkpoint_all = false;
  bool recompute(int64_t layer) const;

  int64_t head_dim = 0;  // 0: dim / n_heads
  // The mixer kind of every layer (one entry) or of each layer (n_layers entries); see
  // trainers/mixer_registry.h for the kinds and mixer.<kind>.* for their options.
  std::vector<std::string> mixers = {"softmax"};

  const std::string& mixer_of(int64_t layer) const { return mixers.size() == 1 ? mixers[0] : mixers[layer]; }
  int64_t head_size() const { return head_dim > 0 ? head_dim : dim / n_heads; }
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t ffn_hidden() const { return ffn_dim > 0 ? ffn_dim : ((8 * dim / 3 + 15) / 16) * 16; }
};

// The options of every registered mixer kind, by "<kind>.<name>" (YAML mixer.<kind>.<name>),
// typed by the registry's defaults: int64_t, double, bool or std::string.
using OptionValue = std::variant<int64_t, double, bool, std::string>;
using MixerOptions = std::map<std::string, OptionValue>;
MixerOptions default_mixer_options();  // trainers/mixer_registry.cpp

struct ParallelConfig {
  int64_t dp = 1;
  int64_t sp = 1;
  int64_t ulysses = 1;   // Ulysses (all-to-all) degree inside the sp group; sp / ulysses ring steps
  std::string layout = "auto";  // auto | zigzag | contiguous (dist::Layout of every sequence)
  int64_t simulate = 0;  // > 0: run that many simulated ranks (threads) in one process
  std::string backend = "auto";  // auto | sim | mpi | nccl

  int64_t world() const { return dp * sp; }
};

struct DataConfig {
  std::string source = "passkey";  // passkey | mqar | selective_copy | text | tokens | hdf5
  int64_t seq_len = 256;
  int64_t batch_size = 8;  // global sequences per step (split over dp)
  int64_t seed = 1234;
  std::string path;                   // text / tokens / hdf5 file
  std::string token_dtype = "uint16"; // tokens: uint16 | uint32
  std::string hdf5_dataset = "tokens";
  double holdout = 0.05;  // fraction of a real data file held out for eval (at its end)
  // Packed documents (trainers/packing.h): none | eod | offsets | fixed.
  std::string documents = "none";
  int64_t eod_id = -1;                      // eod: the token that ends a document (-1: unset)
  std::string offsets_dataset = "offsets";  // offsets: document start offsets in the hdf5 file
  int64_t document_len = 0;                 // fixed: tokens per document (0: unset)
  bool reset_positions = false;             // positions (RoPE) restart at each document start
  // passkey: a key of `passkey_digits` digit tokens at depth `passkey_depth` (fraction of the
  // context, < 0 = uniform random per sample) inside filler; the answer repeats it at the end.
  int64_t passkey_digits = 1;
  double passkey_depth = -1.0;
  // mqar: `mqar_pairs` key-value pairs, then `mqar_queries` of their keys; answers are values.
  int64_t mqar_pairs = 8;
  int64_t mqar_queries = 8;
  // selective_copy: `copy_tokens` data tokens scattered in noise, copied in order at the end.
  int64_t copy_tokens = 8;
};

struct OptimizerConfig {
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 10;
  int64_t decay_steps = 0;  // warmup + cosine end here (min_lr); 0: train.steps
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0: off
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t seed = 42;
  std::string device = "auto";  // auto | cpu | cuda
  int64_t threads = 0;          // OpenMP threads per process (0: leave as is)
};

struct EvalConfig {
  int64_t every = 50;   // 0: only at the end
  int64_t batches = 4;  // eval batches (of data.batch_size sequences)
  int64_t seq_len = 0;  // eval sequences' length (length extrapolation); 0: data.seq_len
};

struct CheckpointConfig {
  int64_t every = 0;  // 0: only at the end (and on a signal)
  int64_t keep = 3;
  std::string resume = "none";  // none | auto | <path to a checkpoint file>
  bool save_final = true;
};

struct LoggingConfig {
  std::string out_dir = "runs/default";
  int64_t every = 10;
  bool progress = true;
  double peak_tflops = 989.0;  // per-GPU dense bf16 peak for MFU (H100/H200 SXM)
  bool profile = false;        // time the phases of every step (StepProfile)
};

struct Config {
  ModelConfig model;
  MixerOptions mixer = default_mixer_options();
  ParallelConfig parallel;
  DataConfig data;
  OptimizerConfig optimizer;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  LoggingConfig logging;

  // The value of option mixer.<kind>.<name> (the type its registry entry declares).
  template <class T>
  const T& mixer_option(const std::string& kind, const std::string& name) const {
    return std::get<T>(mixer.at(kind + "." + name));
  }
};

// Parses YAML text strictly, then applies `overrides` ("model.dim=128", YAML values) and runs
// validate(). Throws lctx::Error naming the key path and what was expected. A top-level
// `preset: NAME` first applies configs/presets/NAME.yaml (or $LCTX_PRESET_DIR/NAME.yaml), and
// `preset: PATH.yaml` that config file (relative to the including file's directory; to the
// working directory for parse_config's text), then the rest of the file; presets do not nest.
// Keys of the retired `attention` section are errors naming the new key.
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides = {});
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// A config stored in a checkpoint: like parse_config, and one written before mixer kinds (an
// `attention` section) is read with its keys moved to where they live now.
Config parse_stored_config(const std::string& yaml_text);

// Cross-field checks (sizes, layout, kinds); parse_config calls it.
void validate(const Config& c);
// The config an evaluation at eval.seq_len runs: c with data.seq_len = eval.seq_len (and
// eval.seq_len 0); validate() checks it when eval.seq_len is set.
Config eval_length_config(const Config& c);
// Checks that a runtime world size fits the config (dp*sp); called once the world is known.
// The GPU-only rules (bf16 compute, head dim 64 or 128); validate() applies them when
// train.device is cuda, and the trainer when train.device = auto resolves to a GPU.
void validate_for_gpu(const Config& c);
void validate_world(const Config& c, int64_t world_size);

// The resolved configuration as YAML, every option present (defaults included).
std::string to_yaml(const Config& c);
// The keys whose values change the model's parameters (their shapes/meaning); a checkpoint
// written with different values cannot be resumed.
std::vector<std::string> model_shaping_keys();
// The value of one option (by path) as it appears in to_yaml().
std::string option_value(const Config& c, const std::string& path);

// Documentation of every option, one row per key: used by --print-options (markdown table).
std::string options_markdown();
// All option paths in schema order.
std::vector<std::string> option_paths();

// The directory presets are read from: $LCTX_PRESET_DIR, else configs/presets of the source tree
// when it exists, else share/lctx/presets of the installation.
std::string preset_dir();
// The layout sequences are sharded with: parallel.layout, or for auto zigzag unless a layer's
// mixer kind needs contiguous shards.
std::string resolved_layout(const Config& c);

}  // namespace lctx::train
