// Strict config parsing: every class of invalid config gives a message naming the key and the
// expectation; the resolved config round-trips; the README documents every option.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <unistd.h>

#include "core/error.h"
#include "trainers/config.h"

using namespace lctx;
using namespace lctx::train;

namespace {

struct BadCase {
  const char* name;
  const char* yaml;
  std::vector<const char*> expect;  // substrings of the error message
};

std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::vector<BadCase>& bad_cases() {
  static const std::vector<BadCase> cases = {
      {"unknown_key", "model:\n  n_layer: 2\n", {"unknown key 'model.n_layer'", "did you mean 'model.n_layers'"}},
      {"unknown_section", "optimiser:\n  lr: 0.1\n", {"unknown key 'optimiser'", "did you mean 'optimizer'"}},
      {"unknown_nested", "data:\n  passkey:\n    digit: 3\n", {"unknown key 'data.passkey.digit'", "data.passkey.digits"}},
      {"section_not_map", "model: 3\n", {"'model' must be a mapping"}},
      {"int_type", "model:\n  dim: sixty\n", {"model.dim must be an integer", "'sixty'"}},
      {"int_not_float", "model:\n  dim: 64.5\n", {"model.dim must be an integer"}},
      {"float_type", "optimizer:\n  lr: fast\n", {"optimizer.lr must be a finite number", "'fast'"}},
      {"bool_type", "model:\n  tied_embeddings: 1\n", {"model.tied_embeddings must be true or false"}},
      {"null_value", "train:\n  steps:\n", {"train.steps must be an integer", "null"}},
      {"list_for_scalar", "data:\n  seq_len: [1, 2]\n", {"data.seq_len must be an integer", "a list"}},
      {"range_low", "model:\n  n_layers: 0\n", {"model.n_layers must be an integer in [1, 4096]", "'0'"}},
      {"range_high", "optimizer:\n  beta1: 1.5\n", {"optimizer.beta1 must be a finite number in [0, 0.999999]", "'1.5'"}},
      {"negative_steps", "train:\n  steps: -5\n", {"train.steps must be an integer", "'-5'"}},
      {"bad_choice", "model:\n  position: learned\n", {"model.position must be one of rope, alibi, none", "'learned'"}},
      {"bad_source", "data:\n  source: wikipedia\n", {"data.source must be one of passkey, mqar"}},
      {"bad_layer_set", "model:\n  activation_checkpointing: some\n", {"model.activation_checkpointing must be none, all or a list"}},
      {"ckpt_layer_range", "model:\n  n_layers: 2\n  activation_checkpointing: [0, 5]\n", {"names layer 5", "0..1"}},
      {"heads_dim", "model:\n  dim: 60\n  n_heads: 8\n", {"model.dim (60) must be divisible by model.n_heads (8)"}},
      {"heads_kv", "model:\n  n_heads: 4\n  n_kv_heads: 3\n", {"model.n_heads (4) must be divisible by model.n_kv_heads (3)"}},
      {"rope_odd", "model:\n  dim: 12\n  n_heads: 4\n", {"RoPE needs an even head dim"}},
      {"unknown_kind", "model:\n  mixers: not_a_kind\n", {"model.mixers: unknown mixer kind 'not_a_kind'", "registered kinds: softmax"}},
      {"unknown_kind_in_list", "model:\n  n_layers: 2\n  mixers: [softmax, not_a_kind]\n", {"model.mixers[1]: unknown mixer kind 'not_a_kind'"}},
      {"mixers_count", "model:\n  n_layers: 3\n  mixers: [softmax, softmax]\n", {"model.mixers has 2 entries, expected 1 (every layer) or model.n_layers = 3"}},
      {"option_of_unknown_kind", "mixer:\n  not_a_kind:\n    d_state: 16\n", {"mixer.not_a_kind", "unknown mixer kind 'not_a_kind'", "registered kinds: softmax"}},
      {"option_under_wrong_kind", "mixer:\n  softmax:\n    d_state: 16\n", {"unknown key 'mixer.softmax.d_state'", "mixer kind softmax has the options sp, backend"}},
      {"bad_sp_strategy", "mixer:\n  softmax:\n    sp: zigzag\n", {"mixer.softmax.sp must be one of auto, ring, ulysses, hybrid, all_gather", "'zigzag'"}},
      {"retired_kind", "attention:\n  kind: ring\n", {"'attention.kind' was replaced by model.mixers: softmax with mixer.softmax.sp"}},
      {"retired_layers", "attention:\n  layers: [ring, ring]\n", {"'attention.layers' was replaced by model.mixers"}},
      {"retired_head_groups", "attention:\n  head_groups: 2\n", {"'attention.head_groups' was replaced by mixer.softmax.head_groups"}},
      {"retired_section", "attention: {}\n", {"'attention' was replaced by model.mixers"}},
      {"bad_layout", "parallel:\n  layout: striped\n", {"parallel.layout must be one of auto, zigzag, contiguous"}},
      {"zigzag_divisible", "parallel:\n  sp: 4\ndata:\n  seq_len: 100\n", {"data.seq_len (100) must be divisible by 2 * parallel.sp = 8"}},
      {"zigzag_odd_one_rank", "data:\n  seq_len: 15\n", {"data.seq_len (15) must be divisible by 2 * parallel.sp = 2", "parallel.layout: contiguous"}},
      {"contiguous_divisible", "parallel:\n  sp: 4\n  layout: contiguous\ndata:\n  seq_len: 98\n", {"data.seq_len (98) must be divisible by parallel.sp = 4", "contiguous"}},
      {"ulysses_divides_sp", "mixer:\n  softmax:\n    sp: hybrid\nparallel:\n  sp: 4\n  ulysses: 3\n", {"parallel.ulysses (3) must divide parallel.sp (4)"}},
      {"ulysses_heads", "model:\n  dim: 48\n  n_heads: 6\n  n_kv_heads: 6\nmixer:\n  softmax:\n    sp: ulysses\nparallel:\n  sp: 4\n  ulysses: 4\ndata:\n  seq_len: 64\n", {"model.n_heads (6) / mixer.softmax.head_groups (1) must be divisible by parallel.ulysses (4)"}},
      {"ulysses_kv_heads", "model:\n  dim: 96\n  n_heads: 12\n  n_kv_heads: 3\nparallel:\n  sp: 4\n  ulysses: 4\ndata:\n  seq_len: 64\n", {"model.n_kv_heads (3) / mixer.softmax.head_groups (1) and parallel.ulysses (4) must divide one another"}},
      {"head_groups", "model:\n  n_heads: 4\n  n_kv_heads: 2\nmixer:\n  softmax:\n    head_groups: 4\n", {"mixer.softmax.head_groups (4) must divide model.n_heads (4) and model.n_kv_heads (2)"}},
      {"head_groups_ulysses", "model:\n  dim: 64\n  n_heads: 4\nmixer:\n  softmax:\n    head_groups: 2\nparallel:\n  sp: 4\n  ulysses: 4\ndata:\n  seq_len: 64\n", {"model.n_heads (4) / mixer.softmax.head_groups (2) must be divisible by parallel.ulysses (4)"}},
      {"ulysses_needs_full", "mixer:\n  softmax:\n    sp: ulysses\nparallel:\n  sp: 4\n  ulysses: 2\n", {"mixer.softmax.sp = ulysses needs parallel.ulysses = parallel.sp"}},
      {"ring_with_ulysses", "mixer:\n  softmax:\n    sp: ring\nparallel:\n  sp: 4\n  ulysses: 2\n", {"mixer.softmax.sp = ring needs parallel.ulysses = 1"}},
      {"world_mismatch", "parallel:\n  dp: 2\n  sp: 2\n  simulate: 3\n", {"parallel.simulate (3) must equal the world size parallel.dp * parallel.sp = 4"}},
      {"batch_dp", "parallel:\n  dp: 3\ndata:\n  batch_size: 8\n", {"data.batch_size (8) must be divisible by parallel.dp (3)"}},
      {"passkey_short", "data:\n  source: passkey\n  seq_len: 10\n  passkey:\n    digits: 4\n", {"data.seq_len (10) is too short", "4-digit passkey"}},
      {"mqar_vocab", "model:\n  vocab_size: 16\ndata:\n  source: mqar\n  mqar:\n    pairs: 20\n    queries: 4\n", {"needs model.vocab_size >= 41"}},
      {"mqar_queries", "data:\n  source: mqar\n  mqar:\n    pairs: 4\n    queries: 8\n", {"data.mqar.queries (8) must be <= data.mqar.pairs (4)"}},
      {"text_needs_path", "data:\n  source: text\n", {"data.source = text needs data.path"}},
      {"text_vocab", "model:\n  vocab_size: 100\ndata:\n  source: text\n  path: x.txt\n", {"needs model.vocab_size >= 256"}},
      {"bad_documents", "data:\n  documents: eos\n", {"data.documents must be one of none, eod, offsets, fixed", "'eos'"}},
      {"eod_needs_id", "data:\n  source: tokens\n  path: t.bin\n  documents: eod\n", {"data.documents = eod needs data.eod_id"}},
      {"eod_id_vocab", "model:\n  vocab_size: 100\ndata:\n  source: tokens\n  path: t.bin\n  documents: eod\n  eod_id: 100\n", {"data.eod_id (100) must be below model.vocab_size (100)"}},
      {"eod_id_byte", "model:\n  vocab_size: 512\ndata:\n  source: text\n  path: t.txt\n  documents: eod\n  eod_id: 300\n", {"data.eod_id (300) must be a byte"}},
      {"eod_on_hdf5", "data:\n  source: hdf5\n  path: t.h5\n  documents: eod\n  eod_id: 1\n", {"data.documents = eod needs data.source text or tokens (got hdf5", "data.documents: offsets"}},
      {"eod_on_task", "data:\n  documents: eod\n  eod_id: 1\n", {"data.documents = eod needs data.source text or tokens (got passkey)"}},
      {"eod_id_unused", "data:\n  source: tokens\n  path: t.bin\n  eod_id: 3\n", {"data.eod_id (3) is read only with data.documents: eod", "data.documents is none"}},
      {"eod_id_range", "data:\n  eod_id: -2\n", {"data.eod_id must be an integer in [-1, 2147483647]"}},
      {"offsets_on_tokens", "data:\n  source: tokens\n  path: t.bin\n  documents: offsets\n", {"data.documents = offsets needs data.source hdf5 (got tokens)", "data.documents: eod"}},
      {"offsets_dataset_empty", "data:\n  source: hdf5\n  path: t.h5\n  documents: offsets\n  offsets_dataset: ''\n", {"data.documents = offsets needs data.offsets_dataset"}},
      {"fixed_needs_len", "data:\n  documents: fixed\n", {"data.documents = fixed needs data.document_len >= 1", "got 0"}},
      {"document_len_negative", "data:\n  documents: fixed\n  document_len: -4\n", {"data.document_len must be an integer in [0, 17179869184]", "'-4'"}},
      {"document_len_unused", "data:\n  document_len: 16\n", {"data.document_len (16) is read only with data.documents: fixed"}},
      {"document_len_above_seq", "data:\n  source: tokens\n  path: t.bin\n  seq_len: 64\n  documents: fixed\n  document_len: 65\n", {"data.document_len (65) must be at most data.seq_len (64)"}},
      {"fixed_task_multiple", "data:\n  seq_len: 64\n  documents: fixed\n  document_len: 24\n", {"data.seq_len (64) must be a multiple of data.document_len (24) with data.source = passkey"}},
      {"fixed_passkey_short", "data:\n  seq_len: 64\n  documents: fixed\n  document_len: 16\n  passkey:\n    digits: 4\n", {"data.document_len (16) is too short for a 4-digit passkey (need >= 17)"}},
      {"fixed_mqar_short", "data:\n  source: mqar\n  seq_len: 64\n  documents: fixed\n  document_len: 32\n", {"data.document_len (32) is too short for data.mqar", "= 34"}},
      {"fixed_copy_short", "data:\n  source: selective_copy\n  seq_len: 64\n  documents: fixed\n  document_len: 16\n  selective_copy:\n    tokens: 6\n", {"data.document_len (16) is too short for data.selective_copy.tokens = 6 (need >= 21)"}},
      {"reset_needs_documents", "data:\n  reset_positions: true\n", {"data.reset_positions", "needs data.documents", "data.documents is none"}},
      {"min_lr", "optimizer:\n  lr: 1.0e-3\n  min_lr: 1.0e-2\n", {"optimizer.min_lr (0.01) must be <= optimizer.lr (0.001)"}},
      {"decay_steps", "optimizer:\n  warmup_steps: 10\n  decay_steps: 10\n",
       {"optimizer.decay_steps (10) must be 0 (= train.steps) or above optimizer.warmup_steps (10)"}},
      {"bf16_cpu", "model:\n  dtype: bf16\ntrain:\n  device: cpu\n", {"model.dtype = bf16 needs a GPU"}},
      {"cudnn_cpu", "mixer:\n  softmax:\n    backend: cudnn\ntrain:\n  device: cpu\n", {"mixer.softmax.backend = cudnn needs a GPU"}},
      {"backend_name", "mixer:\n  softmax:\n    backend: cuDNN\n", {"mixer.softmax.backend", "auto, cudnn, lctx"}},
      {"beta2_limit_named", "optimizer:\n  beta2: 1\n", {"optimizer.beta2 must be a finite number in [0, 0.999999999]", "'1'"}},
      {"infinite_real", "mixer:\n  softmax:\n    softmax_scale: .inf\n", {"mixer.softmax.softmax_scale must be a finite number", "'.inf'"}},
      {"overflowing_real", "mixer:\n  softmax:\n    softmax_scale: 1e400\n", {"mixer.softmax.softmax_scale must be a finite number"}},
      {"nul_in_string", "data:\n  path: \"/etc/passwd\\0junk\"\n", {"data.path must be a string"}},
      {"duplicate_key", "model:\n  dim: 64\n  dim: 32\n", {"'model.dim' is given twice (lines 2 and 3)"}},
      {"repeated_section", "model:\n  dim: 64\ntrain:\n  steps: 3\nmodel:\n  n_layers: 3\n", {"'model' is given twice (lines 1 and 5)"}},
      {"second_document", "model:\n  dim: 64\n---\ntrain:\n  steps: 3\n", {"holds 2 YAML documents"}},
      {"invalid_second_document", "model:\n  dim: 64\n...\n: [\n", {"invalid YAML"}},
      {"unknown_preset", "preset: gpt-17\n", {"preset 'gpt-17' does not exist", "presets:"}},
      {"preset_not_name", "preset: [a, b]\n", {"preset must be a preset name"}},
      {"preset_missing_file", "preset: no-such-dir/base.yaml\n", {"preset 'no-such-dir/base.yaml' does not exist", "no file"}},
      {"f32_gpu", "model:\n  dim: 256\n  dtype: f32\ntrain:\n  device: cuda\n", {"model.dtype = f32 is CPU-only"}},
      {"gpu_head_dim", "model:\n  dim: 64\n  n_heads: 4\ntrain:\n  device: cuda\n",
       {"model.dim / model.n_heads = 64 / 4) is 16 but must be 64 or 128"}},
      {"sim_backend", "parallel:\n  dp: 2\n  simulate: 2\n  backend: mpi\n", {"parallel.backend = mpi cannot simulate ranks"}},
      {"invalid_yaml", "model: {dim: 3\n", {"invalid YAML"}},
      {"top_level_list", "- 1\n- 2\n", {"the top level must be a mapping"}},
  };
  return cases;
}

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, NamesKeyAndExpectation) {
  const BadCase& c = GetParam();
  const std::string msg = error_of(c.yaml);
  ASSERT_FALSE(msg.empty()) << "accepted:\n" << c.yaml;
  for (const char* e : c.expect) EXPECT_NE(msg.find(e), std::string::npos) << "expected '" << e << "' in: " << msg;
}

INSTANTIATE_TEST_SUITE_P(AllClasses, BadConfig, ::testing::ValuesIn(bad_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Config, WorldSizeCheck) {
  const Config c = parse_config("parallel:\n  dp: 2\n  sp: 2\n");
  validate_world(c, 4);
  try {
    validate_world(c, 2);
    FAIL() << "world 2 accepted for dp 2 x sp 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the job has 2 ranks but parallel.dp * parallel.sp = 2 * 2 = 4"),
              std::string::npos)
        << e.what();
  }
}

TEST(Config, DefaultsAndOverrides) {
  const Config c = parse_config("model:\n  dim: 128\n", {"model.n_layers=6", "model.mixers=[softmax, softmax, softmax, softmax, softmax, softmax]", "mixer.softmax.head_groups=2"});
  EXPECT_EQ(c.model.dim, 128);
  EXPECT_EQ(c.model.n_layers, 6);
  EXPECT_EQ(c.model.mixers.size(), 6u);
  EXPECT_EQ(c.mixer_option<int64_t>("softmax", "head_groups"), 2);
  EXPECT_EQ(parse_config("model:\n  mixers: softmax\n").model.mixers, std::vector<std::string>{"softmax"});
  EXPECT_EQ(c.model.vocab_size, ModelConfig{}.vocab_size);
  try {
    parse_config("", {"model.dimm=3"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key 'model.dimm' (did you mean 'model.dim'?)"), std::string::npos);
  }
}

TEST(Config, ActivationCheckpointingForms) {
  EXPECT_TRUE(parse_config("model:\n  activation_checkpointing: all\n").model.recompute(1));
  const Config c = parse_config("model:\n  n_layers: 3\n  activation_checkpointing: [1]\n");
  EXPECT_FALSE(c.model.recompute(0));
  EXPECT_TRUE(c.model.recompute(1));
  EXPECT_FALSE(parse_config("model:\n  activation_checkpointing: none\n").model.recompute(0));
}

TEST(Config, ResolvedYamlRoundTrips) {
  const Config c = parse_config(
      "model:\n  dim: 96\n  n_heads: 6\n  n_kv_heads: 2\n  rope_theta: 500000\n  activation_checkpointing: [0, 1]\n"
      "mixer:\n  softmax:\n    sp: ring\n    qk_norm: true\nparallel:\n  sp: 2\n  simulate: 2\n  layout: contiguous\ndata:\n  path: \"a file: with colon.txt\"\n"
      "optimizer:\n  lr: 0.00123456789\n");
  const std::string y = to_yaml(c);
  const Config back = parse_config(y);
  EXPECT_EQ(to_yaml(back), y);
  for (const auto& k : option_paths()) EXPECT_EQ(option_value(back, k), option_value(c, k)) << k;
  EXPECT_NE(y.find("rope_theta: 500000.0"), std::string::npos) << y;
}

TEST(Config, EveryOptionInReadmeTable) {
  std::ifstream f(std::string(LCTX_SOURCE_DIR) + "README.md");
  ASSERT_TRUE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string readme = ss.str();
  const size_t sec = readme.find("## Configuration (lctx-train)");
  ASSERT_NE(sec, std::string::npos) << "README has no '## Configuration (lctx-train)' section";
  const size_t end = readme.find("\n## ", sec + 5);
  const std::string section = readme.substr(sec, end == std::string::npos ? std::string::npos : end - sec);
  for (const auto& k : option_paths())
    EXPECT_NE(section.find("| `" + k + "` |"), std::string::npos) << "README table lacks option " << k;
}

TEST(Config, ShippedConfigsParse) {
  // mamba-selective-copy: a GPU config whose head dim (64 / 4) only attention layers would refuse.
  for (const char* name :
       {"quickstart", "gpu-1", "gpu-2-ring", "ctx-1m", "bench-4l-2048", "packed-documents", "mamba-selective-copy",
        "mamba-selective-copy-long"}) {
    const std::string path = std::string(LCTX_SOURCE_DIR) + "configs/" + name + ".yaml";
    EXPECT_NO_THROW(load_config(path)) << path;
  }
}

// `preset: PATH.yaml` applies another config file, relative to the including file's directory,
// before the file's own keys; that file may not name a preset itself.
TEST(Config, PresetByPath) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("lctx_preset_path_" + std::to_string(::getpid()));
  fs::create_directories(dir / "stage");
  auto write = [](const fs::path& p, const std::string& text) { std::ofstream(p) << text; };
  write(dir / "base.yaml", "model:\n  dim: 96\n  n_layers: 3\ntrain:\n  steps: 7\n");
  write(dir / "stage" / "long.yaml", "preset: ../base.yaml\ntrain:\n  steps: 9\n");
  const Config c = load_config((dir / "stage" / "long.yaml").string());
  EXPECT_EQ(c.model.dim, 96);
  EXPECT_EQ(c.model.n_layers, 3);
  EXPECT_EQ(c.train.steps, 9);  // the file's own key wins
  write(dir / "nested.yaml", "preset: mqa\n");
  write(dir / "top.yaml", "preset: nested.yaml\n");
  try {
    load_config((dir / "top.yaml").string());
    ADD_FAILURE() << "a preset file naming a preset must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("presets do not nest"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// Every preset in configs/presets loads and validates, and the file's own keys win over it.
TEST(Config, EveryPresetLoads) {
  int presets = 0;
  for (const auto& e : std::filesystem::directory_iterator(preset_dir())) {
    if (e.path().extension() != ".yaml") continue;
    ++presets;
    const std::string name = e.path().stem().string();
    Config c;
    ASSERT_NO_THROW(c = parse_config("preset: " + name + "\n")) << name;
    // (vocab_size: n_layers would clash with a preset's per-layer model.mixers list)
    const Config own = parse_config("preset: " + name + "\nmodel:\n  vocab_size: 77\n");
    EXPECT_EQ(own.model.vocab_size, 77) << name;
    EXPECT_EQ(own.model.dim, c.model.dim) << name;
  }
  EXPECT_GE(presets, 3);
  const Config q = parse_config("preset: qwen3-0.6b\n");
  EXPECT_EQ(q.model.head_size(), 128);
  EXPECT_EQ(q.model.kv_heads(), 8);
  EXPECT_TRUE(q.mixer_option<bool>("softmax", "qk_norm"));
}

// A checkpoint written before mixer kinds stored an `attention` section: it still resumes.
TEST(Config, StoredConfigOfEarlierVersions) {
  const Config c = parse_stored_config(
      "model:\n  dim: 64\nattention:\n  kind: ring\n  layers: []\n  softmax_scale: 0.5\n  head_groups: 2\n"
      "  backend: lctx\nparallel:\n  sp: 2\n");
  EXPECT_EQ(c.mixer_option<std::string>("softmax", "sp"), "ring");
  EXPECT_EQ(c.mixer_option<double>("softmax", "softmax_scale"), 0.5);
  EXPECT_EQ(c.mixer_option<int64_t>("softmax", "head_groups"), 2);
  EXPECT_EQ(c.mixer_option<std::string>("softmax", "backend"), "lctx");
  EXPECT_EQ(parse_stored_config("attention:\n  kind: flash\n").mixer_option<std::string>("softmax", "sp"), "auto");
  EXPECT_EQ(to_yaml(parse_stored_config(to_yaml(c))), to_yaml(c));
}

// Kind options are model-shaping where they change parameters or the function (resume checks).
TEST(Config, MixerOptionsInSchema) {
  const auto keys = model_shaping_keys();
  for (const char* k : {"model.mixers", "model.head_dim", "mixer.softmax.qk_norm", "mixer.softmax.window"})
    EXPECT_NE(std::find(keys.begin(), keys.end(), std::string(k)), keys.end()) << k;
  const std::string md = options_markdown();
  EXPECT_NE(md.find("| `mixer.softmax.sp` | one of auto, ring, ulysses, hybrid, all_gather |"), std::string::npos) << md;
}

}  // namespace
