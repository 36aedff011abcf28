// The option table behind lctx-train's Config: one row per key (path, type, range or choices,
// doc, where the value lives, whether it shapes the model). Parsing, --print-config, the
// README table, resume checks and error messages all read it. The rows of mixer.<kind>.* come
// from the mixer registry. Internal to trainers/ (config.cpp, config_validate.cpp).
#pragma once
#include <yaml-cpp/yaml.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "trainers/config.h"

namespace lctx::train::schema {

enum class Kind { integer, real, boolean, string, choice, string_list, layer_set };

struct Option {
  std::string path;
  Kind kind;
  std::string doc;
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices;
  std::function<void*(Config&)> field;  // int64_t*, double*, bool*, std::string*, ...
  bool shapes_model = false;            // changing it changes the parameters
  bool scalar_or_list = false;          // string_list: a single string means a list of one
};

const std::vector<Option>& options();  // in documentation order
const Option* find(const std::string& path);
bool is_section(const std::string& path);  // some option lives under path + "."
std::string closest_key(const std::string& path);  // empty when nothing is close

std::string node_desc(const YAML::Node& n);
std::string expected_desc(const Option& o);
void set(Config& c, const Option& o, const YAML::Node& n);  // throws naming o.path
std::string value_text(const Config& c, const Option& o);   // as to_yaml() writes it

}  // namespace lctx::train::schema
