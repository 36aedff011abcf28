#include "trainers/checkpoint_match.h"

#include "core/error.h"

namespace lctx::train {

Config check_model_shaping(const CheckpointState& st, const std::string& file, const Config& cfg) {
  Config saved;
  try {
    saved = parse_stored_config(st.config_yaml);
  } catch (const std::exception& e) {
    LCTX_FAIL("checkpoint ", file, ": its stored config (attribute 'config') does not parse: ", e.what());
  }
  for (const auto& key : model_shaping_keys()) {
    const std::string a = option_value(saved, key), b = option_value(cfg, key);
    LCTX_CHECK(a == b, "cannot use checkpoint ", file, ": model-shaping key ", key, " is ", a,
               " in the checkpoint but ", b, " in this config");
  }
  return saved;
}

const Tensor& matching_tensor(const std::vector<std::pair<std::string, Tensor>>& v, const mixers::Param& p,
                              const char* what, const std::string& file) {
  for (const auto& [name, t] : v)
    if (name == p.name) {
      LCTX_CHECK(t.shape() == p.master.shape(), "checkpoint ", file, ": ", what, " ", name, " has shape ",
                 shape_str(t.shape()), ", the model expects ", shape_str(p.master.shape()));
      return t;
    }
  LCTX_FAIL("checkpoint ", file, " has no ", what, " '", p.name, "'");
}

}  // namespace lctx::train
