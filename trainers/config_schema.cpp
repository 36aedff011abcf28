#include "trainers/config_schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "trainers/mixer_registry.h"

namespace lctx::train::schema {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

#define LCTX_FIELD(expr) [](Config& c) -> void* { return &c.expr; }

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The option or section path closest to `path` (same parent preferred).

bool parse_int(const std::string& s, int64_t& v) {
  const char* b = s.data();
  const char* e = b + s.size();
  if (b != e && *b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, v);
  return ec == std::errc() && p == e;
}

bool parse_real(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && !std::isnan(v);
}

std::string yaml_scalar(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  const bool plain = !s.empty() && s.find_first_of(":#{}[],&*!|>'\"%@`\n") == std::string::npos &&
                     s.front() != ' ' && s.back() != ' ' && s != "true" && s != "false" && s != "null";
  return plain ? s : std::string(e.c_str());
}

// The shortest text that reads back to the same double.
std::string shortest(double v) {
  std::string s;
  for (int p = 1; p <= 17; ++p) {
    std::ostringstream t;
    t.precision(p);
    t << v;
    s = t.str();
    if (std::strtod(s.c_str(), nullptr) == v) break;
  }
  return s;
}

// As YAML writes a real: integral values with ".0" (so they read back as reals).
std::string format_real(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 1e15) return std::to_string(static_cast<long long>(v)) + ".0";
  return shortest(v);
}

}  // namespace

const std::vector<Option>& options() {
  static const std::vector<Option> s = [] {
    std::vector<Option> o;
    auto add = [&](std::string path, Kind kind, std::function<void*(Config&)> f, std::string doc, double lo = -kInf,
                   double hi = kInf, std::vector<std::string> choices = {}, bool shapes = false) {
      o.push_back(Option{std::move(path), kind, std::move(doc), lo, hi, std::move(choices), std::move(f), shapes});
    };
    // model
    add("model.vocab_size", Kind::integer, LCTX_FIELD(model.vocab_size), "vocabulary size (bytes: 256)", 2, 1 << 30, {}, true);
    add("model.dim", Kind::integer, LCTX_FIELD(model.dim), "model width", 1, 1 << 20, {}, true);
    add("model.n_layers", Kind::integer, LCTX_FIELD(model.n_layers), "transformer blocks", 1, 4096, {}, true);
    add("model.n_heads", Kind::integer, LCTX_FIELD(model.n_heads), "query heads (dim / n_heads = head dim)", 1, 4096, {}, true);
    add("model.head_dim", Kind::integer, LCTX_FIELD(model.head_dim), "head dim of attention-like mixers; 0 = dim / n_heads", 0, 1 << 16, {}, true);
    add("model.n_kv_heads", Kind::integer, LCTX_FIELD(model.n_kv_heads), "key/value heads for GQA; 0 = n_heads", 0, 4096, {}, true);
    add("model.ffn_dim", Kind::integer, LCTX_FIELD(model.ffn_dim), "SwiGLU hidden size; 0 = 8/3 dim rounded up to 16", 0, 1 << 22, {}, true);
    add("model.mixers", Kind::string_list, LCTX_FIELD(model.mixers), "mixer kind of every layer (one name) or of each layer (a list of n_layers names): see the mixer.<kind> options", -kInf, kInf, {}, true);
    o.back().scalar_or_list = true;
    add("model.mlp_chunk", Kind::integer, LCTX_FIELD(model.mlp_chunk), "tokens per MLP chunk in recomputed layers: their gate/up activations exist for one chunk at a time", 1, int64_t(1) << 40);
    add("model.position", Kind::choice, LCTX_FIELD(model.position), "position encoding of attention-like mixers", -kInf, kInf, {"rope", "alibi", "none"}, true);
    add("model.rope_theta", Kind::real, LCTX_FIELD(model.rope_theta), "RoPE base", 1.0, kInf, {}, true);
    add("model.norm_eps", Kind::real, LCTX_FIELD(model.norm_eps), "RMSNorm epsilon", 0.0, 1.0, {}, true);
    add("model.init_std", Kind::real, LCTX_FIELD(model.init_std), "std of the normal weight init", 0.0, 10.0);
    add("model.tied_embeddings", Kind::boolean, LCTX_FIELD(model.tied_embeddings), "output head shares the embedding matrix", -kInf, kInf, {}, true);
    add("model.dtype", Kind::choice, LCTX_FIELD(model.dtype), "compute dtype (auto: f32 on CPU, bf16 on GPU; master weights stay f32)", -kInf, kInf, {"auto", "f32", "bf16"});
    add("model.activation_checkpointing", Kind::layer_set, [](Config& c) -> void* { return &c.model; },
        "layers recomputed in backward: none, all, or a list of layer indices");
    // mixer.<kind>.<name>: from the registry
    for (const MixerKind& k : mixer_kinds())
      for (const MixerOption& m : k.options) {
        const std::string key = k.name + "." + m.name;
        Kind kind = std::holds_alternative<int64_t>(m.value) ? Kind::integer
                    : std::holds_alternative<double>(m.value) ? Kind::real
                    : std::holds_alternative<bool>(m.value)   ? Kind::boolean
                    : m.choices.empty()                       ? Kind::string
                                                              : Kind::choice;
        add("mixer." + key, kind, [key](Config& c) -> void* { return std::visit([](auto& v) -> void* { return &v; }, c.mixer.at(key)); },
            m.doc, std::max(m.lo, -kInf), std::min(m.hi, kInf), m.choices, m.shapes_model);
      }
    // parallel
    add("parallel.dp", Kind::integer, LCTX_FIELD(parallel.dp), "data-parallel degree", 1, 1 << 20);
    add("parallel.sp", Kind::integer, LCTX_FIELD(parallel.sp), "sequence-parallel degree (ranks sharing one sequence)", 1, 1 << 20);
    add("parallel.ulysses", Kind::integer, LCTX_FIELD(parallel.ulysses), "Ulysses (head all-to-all) degree inside sp; the rest of sp is a ring", 1, 1 << 20);
    add("parallel.layout", Kind::choice, LCTX_FIELD(parallel.layout), "how sequences are sharded over sp: zigzag (2 chunks per ring rank, balanced causal work), contiguous, or auto (zigzag unless a mixer kind needs contiguous)", -kInf, kInf, {"auto", "zigzag", "contiguous"});
    add("parallel.simulate", Kind::integer, LCTX_FIELD(parallel.simulate), "run this many simulated ranks (threads) in one process; 0 = real ranks", 0, 4096);
    add("parallel.backend", Kind::choice, LCTX_FIELD(parallel.backend), "communicator: auto (sim when simulating, NCCL on GPU, else MPI), sim, mpi, nccl", -kInf, kInf, {"auto", "sim", "mpi", "nccl"});
    // data
    add("data.source", Kind::choice, LCTX_FIELD(data.source), "synthetic task or real data", -kInf, kInf, {"passkey", "mqar", "selective_copy", "text", "tokens", "hdf5"});
    add("data.seq_len", Kind::integer, LCTX_FIELD(data.seq_len), "tokens per sequence (the context length)", 2, 1ll << 34);
    add("data.batch_size", Kind::integer, LCTX_FIELD(data.batch_size), "sequences per step, summed over dp ranks", 1, 1 << 24);
    add("data.seed", Kind::integer, LCTX_FIELD(data.seed), "data seed (samples depend on seed and global sample index only)", 0, 9.0e15);
    add("data.path", Kind::string, LCTX_FIELD(data.path), "file for text (bytes), tokens (raw uint16/uint32) or hdf5");
    add("data.token_dtype", Kind::choice, LCTX_FIELD(data.token_dtype), "element type of a tokens file", -kInf, kInf, {"uint16", "uint32"});
    add("data.hdf5_dataset", Kind::string, LCTX_FIELD(data.hdf5_dataset), "1-D integer dataset inside the hdf5 file");
    add("data.holdout", Kind::real, LCTX_FIELD(data.holdout), "fraction at the end of a real data file kept for eval", 0.0, 0.5);
    add("data.documents", Kind::choice, LCTX_FIELD(data.documents), "packed documents: attention stays inside each document and the label that predicts the next document's first token is not scored. none (the sequence is one document), eod (text/tokens: a document ends with token data.eod_id, which belongs to it), offsets (hdf5: start offsets of the documents in data.offsets_dataset), fixed (documents of data.document_len tokens; a synthetic task packs one sample per document)", -kInf, kInf, {"none", "eod", "offsets", "fixed"});
    add("data.eod_id", Kind::integer, LCTX_FIELD(data.eod_id), "data.documents = eod: the token id that ends a document; -1 = unset", -1, 2147483647);
    add("data.offsets_dataset", Kind::string, LCTX_FIELD(data.offsets_dataset), "data.documents = offsets: 1-D integer dataset in the hdf5 file holding the start offset of every document in the token stream (ascending, first 0)");
    add("data.document_len", Kind::integer, LCTX_FIELD(data.document_len), "data.documents = fixed: tokens per document (a synthetic sample is document_len - 1 predictions: a document's last token predicts nothing); 0 = unset", 0, 1ll << 34);
    add("data.reset_positions", Kind::boolean, LCTX_FIELD(data.reset_positions), "with data.documents: positions (RoPE) restart at 0 at each document start instead of counting along the sequence");
    add("data.passkey.digits", Kind::integer, LCTX_FIELD(data.passkey_digits), "digit tokens in the passkey", 1, 64);
    add("data.passkey.depth", Kind::real, LCTX_FIELD(data.passkey_depth), "where the passkey sits (0 = start, 1 = end); < 0 = random per sample", -1.0, 1.0);
    add("data.mqar.pairs", Kind::integer, LCTX_FIELD(data.mqar_pairs), "key-value pairs per sequence", 1, 1 << 20);
    add("data.mqar.queries", Kind::integer, LCTX_FIELD(data.mqar_queries), "keys queried at the end (answers are their values)", 1, 1 << 20);
    add("data.selective_copy.tokens", Kind::integer, LCTX_FIELD(data.copy_tokens), "data tokens to copy", 1, 1 << 20);
    // optimizer
    add("optimizer.lr", Kind::real, LCTX_FIELD(optimizer.lr), "peak learning rate (AdamW)", 0.0, 10.0);
    add("optimizer.min_lr", Kind::real, LCTX_FIELD(optimizer.min_lr), "learning rate at the end of the cosine decay", 0.0, 10.0);
    add("optimizer.warmup_steps", Kind::integer, LCTX_FIELD(optimizer.warmup_steps), "linear warmup steps", 0, 1ll << 40);
    add("optimizer.decay_steps", Kind::integer, LCTX_FIELD(optimizer.decay_steps),
        "step where the cosine reaches min_lr (0 = train.steps); a shorter run stops part way down, and a longer one "
        "stays at min_lr", 0, 1ll << 40);
    add("optimizer.beta1", Kind::real, LCTX_FIELD(optimizer.beta1), "AdamW beta1", 0.0, 0.999999);
    add("optimizer.beta2", Kind::real, LCTX_FIELD(optimizer.beta2), "AdamW beta2", 0.0, 0.999999999);
    add("optimizer.eps", Kind::real, LCTX_FIELD(optimizer.eps), "AdamW epsilon", 0.0, 1.0);
    add("optimizer.weight_decay", Kind::real, LCTX_FIELD(optimizer.weight_decay), "decoupled weight decay (matrices only)", 0.0, 10.0);
    add("optimizer.grad_clip", Kind::real, LCTX_FIELD(optimizer.grad_clip), "clip the global gradient norm to this; 0 = off", 0.0, kInf);
    // train
    add("train.steps", Kind::integer, LCTX_FIELD(train.steps), "optimizer steps in total", 0, 1ll << 40);
    add("train.seed", Kind::integer, LCTX_FIELD(train.seed), "parameter init seed", 0, 9.0e15);
    add("train.device", Kind::choice, LCTX_FIELD(train.device), "where to compute: auto (GPU when present), cpu, cuda", -kInf, kInf, {"auto", "cpu", "cuda"});
    add("train.threads", Kind::integer, LCTX_FIELD(train.threads), "OpenMP threads per rank; 0 = cores / ranks in this process", 0, 4096);
    // eval
    add("eval.every", Kind::integer, LCTX_FIELD(eval.every), "evaluate every this many steps; 0 = only at the end", 0, 1ll << 40);
    add("eval.batches", Kind::integer, LCTX_FIELD(eval.batches), "held-out batches per evaluation", 0, 1 << 20);
    add("eval.seq_len", Kind::integer, LCTX_FIELD(eval.seq_len),
        "length of the eval sequences (length extrapolation: the trained model on longer or shorter sequences of the "
        "same task); 0 = data.seq_len", 0, 1ll << 34);
    // checkpoint
    add("checkpoint.every", Kind::integer, LCTX_FIELD(checkpoint.every), "save every this many steps; 0 = only at the end / on a signal", 0, 1ll << 40);
    add("checkpoint.keep", Kind::integer, LCTX_FIELD(checkpoint.keep), "keep the newest this many checkpoints", 1, 1 << 20);
    add("checkpoint.resume", Kind::string, LCTX_FIELD(checkpoint.resume), "none, auto (newest valid one in <out_dir>/checkpoints) or a checkpoint file");
    add("checkpoint.save_final", Kind::boolean, LCTX_FIELD(checkpoint.save_final), "save after the last step");
    // logging
    add("logging.out_dir", Kind::string, LCTX_FIELD(logging.out_dir), "run directory: metrics.jsonl, loss.png, config.yaml, checkpoints/");
    add("logging.every", Kind::integer, LCTX_FIELD(logging.every), "progress line and metrics record every this many steps", 1, 1ll << 40);
    add("logging.progress", Kind::boolean, LCTX_FIELD(logging.progress), "print the progress line on rank 0");
    add("logging.profile", Kind::boolean, LCTX_FIELD(logging.profile), "time each step's phases (mixer forward/backward, the rest of forward/backward, head and loss, gradient sync, optimizer): a profile line and \"profile_ms\" in metrics.jsonl, at one host wait per step");
    add("logging.peak_tflops", Kind::real, LCTX_FIELD(logging.peak_tflops), "per-GPU peak TFLOP/s that MFU is measured against (dense bf16; H100/H200: 989)", 1e-3, 1e6);
    return o;
  }();
  return s;
}

const Option* find(const std::string& path) {
  for (const auto& o : options())
    if (o.path == path) return &o;
  return nullptr;
}

bool is_section(const std::string& path) {
  const std::string pre = path + ".";
  for (const auto& o : options())
    if (o.path.rfind(pre, 0) == 0) return true;
  return false;
}

std::string closest_key(const std::string& path) {
  std::vector<std::string> cands;
  for (const auto& o : options()) {
    std::string p = o.path;
    cands.push_back(p);
    for (size_t dot = p.rfind('.'); dot != std::string::npos; dot = p.rfind('.')) {
      p = p.substr(0, dot);
      cands.push_back(p);
    }
  }
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : cands) {
    const size_t d = edit_distance(path, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t dot = path.rfind('.');
  const size_t leaf = dot == std::string::npos ? path.size() : path.size() - dot - 1;
  return best_d <= std::max<size_t>(3, leaf / 2) ? best : std::string();
}

std::string node_desc(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: return "'" + n.Scalar() + "'";
    default: return "an undefined value";
  }
}

std::string expected_desc(const Option& o) {
  std::ostringstream os;
  switch (o.kind) {
    case Kind::integer: os << "an integer"; break;
    case Kind::real: os << "a finite number"; break;
    case Kind::boolean: os << "true or false"; break;
    case Kind::string: os << "a string"; break;
    case Kind::choice: {
      os << "one of ";
      for (size_t i = 0; i < o.choices.size(); ++i) os << (i ? ", " : "") << o.choices[i];
      return os.str();
    }
    case Kind::string_list: os << "a list of strings"; break;
    case Kind::layer_set: os << "none, all or a list of layer indices"; break;
  }
  if (o.kind == Kind::integer || o.kind == Kind::real) {
    auto fmt = [&](double v) {
      std::ostringstream f;
      if (o.kind == Kind::integer) f << static_cast<long long>(v);
      else f << shortest(v);
      return f.str();
    };
    if (std::isfinite(o.lo) && std::isfinite(o.hi)) os << " in [" << fmt(o.lo) << ", " << fmt(o.hi) << "]";
    else if (std::isfinite(o.lo)) os << " >= " << fmt(o.lo);
  }
  return os.str();
}

namespace {

[[noreturn]] void bad_value(const Option& o, const YAML::Node& n) {
  LCTX_FAIL("config: ", o.path, " must be ", expected_desc(o), ", got ", node_desc(n));
}

}  // namespace

void set(Config& c, const Option& o, const YAML::Node& n) {
  void* f = o.field(c);
  auto check_range = [&](double v) {
    if (!(v >= o.lo && v <= o.hi)) bad_value(o, n);
  };
  switch (o.kind) {
    case Kind::integer: {
      int64_t v;
      if (!n.IsScalar() || !parse_int(n.Scalar(), v)) bad_value(o, n);
      check_range(static_cast<double>(v));
      *static_cast<int64_t*>(f) = v;
      return;
    }
    case Kind::real: {
      double v;
      if (!n.IsScalar() || !parse_real(n.Scalar(), v) || !std::isfinite(v)) bad_value(o, n);
      check_range(v);
      *static_cast<double*>(f) = v;
      return;
    }
    case Kind::boolean: {
      if (!n.IsScalar() || (n.Scalar() != "true" && n.Scalar() != "false")) bad_value(o, n);
      *static_cast<bool*>(f) = n.Scalar() == "true";
      return;
    }
    case Kind::string: {
      if (!n.IsScalar() || n.Scalar().find('\0') != std::string::npos) bad_value(o, n);
      *static_cast<std::string*>(f) = n.Scalar();
      return;
    }
    case Kind::choice: {
      if (!n.IsScalar() || std::find(o.choices.begin(), o.choices.end(), n.Scalar()) == o.choices.end())
        bad_value(o, n);
      *static_cast<std::string*>(f) = n.Scalar();
      return;
    }
    case Kind::string_list: {
      if (o.scalar_or_list && n.IsScalar()) {
        *static_cast<std::vector<std::string>*>(f) = {n.Scalar()};
        return;
      }
      if (!n.IsSequence()) bad_value(o, n);
      std::vector<std::string> v;
      for (const auto& e : n) {
        if (!e.IsScalar()) bad_value(o, n);
        v.push_back(e.Scalar());
      }
      *static_cast<std::vector<std::string>*>(f) = v;
      return;
    }
    case Kind::layer_set: {
      auto& m = *static_cast<ModelConfig*>(f);
      if (n.IsScalar() && (n.Scalar() == "none" || n.Scalar() == "all")) {
        m.checkpoint_all = n.Scalar() == "all";
        m.checkpoint_layers.clear();
        return;
      }
      if (!n.IsSequence()) bad_value(o, n);
      std::vector<int64_t> v;
      for (const auto& e : n) {
        int64_t x;
        if (!e.IsScalar() || !parse_int(e.Scalar(), x) || x < 0) bad_value(o, n);
        v.push_back(x);
      }
      m.checkpoint_all = false;
      m.checkpoint_layers = v;
      return;
    }
  }
}

std::string value_text(const Config& cc, const Option& o) {
  Config& c = const_cast<Config&>(cc);
  void* f = o.field(c);
  switch (o.kind) {
    case Kind::integer: return std::to_string(*static_cast<int64_t*>(f));
    case Kind::real: return format_real(*static_cast<double*>(f));
    case Kind::boolean: return *static_cast<bool*>(f) ? "true" : "false";
    case Kind::string:
    case Kind::choice: return yaml_scalar(*static_cast<std::string*>(f));
    case Kind::string_list: {
      const auto& v = *static_cast<std::vector<std::string>*>(f);
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + yaml_scalar(v[i]);
      return s + "]";
    }
    case Kind::layer_set: {
      const auto& m = *static_cast<ModelConfig*>(f);
      if (m.checkpoint_all) return "all";
      if (m.checkpoint_layers.empty()) return "none";
      std::string s = "[";
      for (size_t i = 0; i < m.checkpoint_layers.size(); ++i) s += (i ? ", " : "") + std::to_string(m.checkpoint_layers[i]);
      return s + "]";
    }
  }
  return "";
}

}  // namespace lctx::train::schema
