#include "trainers/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "trainers/config_schema.h"
#include "trainers/mixer_registry.h"

namespace lctx::train {

bool ModelConfig::recompute(int64_t layer) const {
  return checkpoint_all ||
         std::find(checkpoint_layers.begin(), checkpoint_layers.end(), layer) != checkpoint_layers.end();
}

namespace {

// Keys of the retired `attention` section and what replaced them.
const char* retired_key(const std::string& path) {
  static const std::pair<const char*, const char*> keys[] = {
      {"attention", "model.mixers (the kind of each layer) and mixer.<kind>.* (its options): softmax attention is "
                    "model.mixers: softmax with options under mixer.softmax"},
      {"attention.kind", "model.mixers: softmax with mixer.softmax.sp (flash -> auto on one rank; ring, ulysses, "
                         "hybrid -> the same name)"},
      {"attention.layers", "model.mixers (a list of kinds, one per layer; the SP strategy is mixer.softmax.sp)"},
      {"attention.softmax_scale", "mixer.softmax.softmax_scale"},
      {"attention.head_groups", "mixer.softmax.head_groups"},
      {"attention.backend", "mixer.softmax.backend"},
  };
  for (const auto& [k, v] : keys)
    if (path == k) return v;
  return nullptr;
}

[[noreturn]] void fail_unknown(const std::string& path) {
  if (const char* now = retired_key(path)) LCTX_FAIL("config: '", path, "' was replaced by ", now);
  if (path.rfind("attention.", 0) == 0) LCTX_FAIL("config: '", path, "' was replaced: ", retired_key("attention"));
  if (path.rfind("mixer.", 0) == 0) {
    const size_t dot = path.find('.', 6);
    const std::string kind = path.substr(6, dot == std::string::npos ? std::string::npos : dot - 6);
    mixer_kind(kind, path);  // throws for a kind that is not registered, listing the registered ones
    std::string opts;
    for (const MixerOption& o : mixer_kind(kind).options) opts += (opts.empty() ? "" : ", ") + o.name;
    LCTX_FAIL("config: unknown key '", path, "': mixer kind ", kind, " has the options ", opts);
  }
  const std::string near = schema::closest_key(path);
  LCTX_FAIL("config: unknown key '", path, "'", near.empty() ? "" : " (did you mean '" + near + "'?)");
}

// One YAML document (several, e.g. after `---`, are an error: which one would be meant?).
YAML::Node load_yaml(const std::string& text, const std::string& what) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    LCTX_FAIL(what, ": invalid YAML: ", e.what());
  }
  LCTX_CHECK(docs.size() <= 1, what, ": holds ", docs.size(), " YAML documents (separated by --- or ...); ",
             "a config is one document");
  return docs.empty() ? YAML::Node() : docs[0];
}

// The text of a config or preset file; anything but a readable regular file is an error.
std::string read_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  LCTX_CHECK(!ec && std::filesystem::exists(st), what, " '", path, "' does not exist");
  LCTX_CHECK(std::filesystem::is_regular_file(st), what, " '", path, "' is ",
             std::filesystem::is_directory(st) ? "a directory" : "not a regular file", ", not a YAML file");
  std::ifstream f(path);
  LCTX_CHECK(f.good(), what, " '", path, "' cannot be read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void apply_node(Config& c, const YAML::Node& node, const std::string& prefix) {
  if (!node.IsMap())
    LCTX_FAIL("config: ", prefix.empty() ? std::string("the top level") : "'" + prefix + "'",
              " must be a mapping of keys, got ", schema::node_desc(node));
  std::map<std::string, int> seen;  // key -> line (1-based)
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) LCTX_FAIL("config: keys must be plain names (under '", prefix, "')");
    const std::string path = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    const auto [it, fresh] = seen.emplace(kv.first.Scalar(), kv.first.Mark().line + 1);
    LCTX_CHECK(fresh, "config: '", path, "' is given twice (lines ", it->second, " and ", kv.first.Mark().line + 1,
               "); give each key once");
    if (const schema::Option* o = schema::find(path)) {
      schema::set(c, *o, kv.second);
    } else if (schema::is_section(path)) {
      apply_node(c, kv.second, path);
    } else if (path == "attention" && kv.second.IsMap() && kv.second.size() > 0) {
      fail_unknown("attention." + kv.second.begin()->first.as<std::string>());  // names the retired key
    } else if (!(prefix.empty() && path == "preset")) {  // the preset was applied first
      fail_unknown(path);
    }
  }
}

void apply_override(Config& c, const std::string& kv) {
  const size_t eq = kv.find('=');
  LCTX_CHECK(eq != std::string::npos && eq > 0, "config: override '", kv, "' must look like key.path=value");
  const std::string path = kv.substr(0, eq);
  const YAML::Node value = load_yaml(kv.substr(eq + 1), "config: override '" + kv + "'");
  const schema::Option* o = schema::find(path);
  LCTX_CHECK(path != "preset", "config: override '", kv, "': a preset is applied before the file's keys; set it in the file");
  if (!o) fail_unknown(path);
  schema::set(c, *o, value);
}

// Applies the file the top-level `preset` key names: NAME (configs/presets/NAME.yaml), or a
// path ending in .yaml, relative to `dir` (the directory of the config that names it).
void apply_preset(Config& c, const YAML::Node& name, const std::filesystem::path& dir) {
  LCTX_CHECK(name.IsScalar() && !name.Scalar().empty(),
             "config: preset must be a preset name or a .yaml path, got ", schema::node_desc(name));
  const std::filesystem::path given(name.Scalar());
  const bool is_path = given.extension() == ".yaml";
  // (dir / given is given itself when given is absolute)
  const std::filesystem::path file = is_path ? dir / given : std::filesystem::path(preset_dir()) / (name.Scalar() + ".yaml");
  if (is_path) {
    LCTX_CHECK(std::filesystem::is_regular_file(file), "config: preset '", name.Scalar(), "' does not exist (no file ",
               file.string(), ")");
  } else if (!std::filesystem::is_regular_file(file)) {
    std::string names;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(preset_dir(), ec))
      if (e.path().extension() == ".yaml") names += (names.empty() ? "" : ", ") + e.path().stem().string();
    LCTX_FAIL("config: preset '", name.Scalar(), "' does not exist (no ", file.string(), "; presets: ",
              names.empty() ? "none" : names, ")");
  }
  const YAML::Node root = load_yaml(read_file(file.string(), "config: preset"), "preset " + file.string());
  LCTX_CHECK(!(root.IsMap() && root["preset"]), "config: preset ", file.string(), " names another preset; presets do not nest");
  try {
    if (!root.IsNull()) apply_node(c, root, "");
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " [in preset " + file.string() + "]");
  }
}

// parse_config with path presets relative to `dir`.
Config parse_config_in(const std::string& yaml_text, const std::vector<std::string>& overrides,
                       const std::filesystem::path& dir) {
  const YAML::Node root = load_yaml(yaml_text, "config");
  Config c;
  if (root.IsMap() && root["preset"]) apply_preset(c, root["preset"], dir);
  if (!root.IsNull()) apply_node(c, root, "");
  for (const auto& o : overrides) apply_override(c, o);
  validate(c);
  return c;
}

}  // namespace

// $LCTX_PRESET_DIR, else the source tree's configs/presets (in-tree builds), else the installed
// presets (<prefix>/share/lctx/presets): found beside the running program (a relocated install)
// or under the prefix lctx was configured with.
std::string preset_dir() {
  namespace fs = std::filesystem;
  if (const char* d = std::getenv("LCTX_PRESET_DIR"); d && *d) return d;
  std::error_code ec;
  const fs::path source = fs::path(LCTX_SOURCE_DIR) / "configs/presets";
  if (fs::is_directory(source, ec)) return source.string();
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = (exe.parent_path() / LCTX_INSTALL_PRESET_DIR_FROM_BIN).lexically_normal();
    if (fs::is_directory(beside, ec)) return beside.string();
  }
  return LCTX_INSTALL_PRESET_DIR;
}

std::string resolved_layout(const Config& c) {
  if (c.parallel.layout != "auto") return c.parallel.layout;
  for (const std::string& k : c.model.mixers)
    if (mixer_kind(k).needs_contiguous) return "contiguous";
  return "zigzag";
}

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides) {
  return parse_config_in(yaml_text, overrides, std::filesystem::current_path());
}

Config parse_stored_config(const std::string& yaml_text) {
  YAML::Node root = load_yaml(yaml_text, "stored config");
  if (root.IsMap() && root["attention"] && root["attention"].IsMap()) {
    const YAML::Node a = root["attention"];
    YAML::Node softmax = root["mixer"]["softmax"];
    for (const char* key : {"softmax_scale", "head_groups", "backend"})
      if (a[key]) softmax[key] = a[key];
    if (a["kind"]) softmax["sp"] = a["kind"].Scalar() == "flash" ? std::string("auto") : a["kind"].Scalar();
    root.remove("attention");
  }
  YAML::Emitter out;
  out << root;
  return parse_config(out.c_str());
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string text = read_file(path, "config: the config file");
  try {
    return parse_config_in(text, overrides, std::filesystem::absolute(path).parent_path());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " [in " + path + "]");
  }
}

std::string to_yaml(const Config& c) {
  std::ostringstream os;
  std::vector<std::string> open;  // currently open sections
  for (const auto& o : schema::options()) {
    std::vector<std::string> parts;
    std::stringstream ps(o.path);
    for (std::string t; std::getline(ps, t, '.');) parts.push_back(t);
    size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
    open.resize(common);
    for (size_t i = common; i + 1 < parts.size(); ++i) {
      os << std::string(2 * i, ' ') << parts[i] << ":\n";
      open.push_back(parts[i]);
    }
    os << std::string(2 * (parts.size() - 1), ' ') << parts.back() << ": " << schema::value_text(c, o) << "\n";
  }
  return os.str();
}

std::vector<std::string> model_shaping_keys() {
  std::vector<std::string> k;
  for (const auto& o : schema::options())
    if (o.shapes_model) k.push_back(o.path);
  return k;
}

std::string option_value(const Config& c, const std::string& path) {
  const schema::Option* o = schema::find(path);
  LCTX_CHECK(o, "config: unknown key '", path, "'");
  return schema::value_text(c, *o);
}

std::vector<std::string> option_paths() {
  std::vector<std::string> k;
  for (const auto& o : schema::options()) k.push_back(o.path);
  return k;
}

std::string options_markdown() {
  const Config defaults;
  std::ostringstream os;
  os << "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
  for (const auto& o : schema::options()) {
    std::string type = schema::expected_desc(o);
    std::string def = schema::value_text(defaults, o);
    if (def.empty() || def == "\"\"") def = "(empty)";
    std::string doc = o.doc;
    for (auto* s : {&type, &def, &doc})
      for (size_t i = 0; (i = s->find('|', i)) != std::string::npos; i += 2) s->replace(i, 1, "\\|");
    os << "| `" << o.path << "` | " << type << " | `" << def << "` | " << doc << (o.shapes_model ? " (model-shaping)" : "")
       << " |\n";
  }
  return os.str();
}

}  // namespace lctx::train
