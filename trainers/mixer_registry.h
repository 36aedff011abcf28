// The one list of mixer kinds lctx-train knows. Each entry names a kind, documents it, declares
// its options (YAML mixer.<kind>.<name>, typed by their defaults), checks a config that uses
// it, and builds its mixer for a layer. Config parsing, validation, --print-options,
// --print-config, the README option table and the conformance suite (tests/mixers) all read
// this list: adding a kind means adding an entry here beside its files in mixers/.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixers/mixer.h"
#include "trainers/config.h"

namespace lctx::dist {
class Mesh;
class Layout;
}  // namespace lctx::dist

namespace lctx::train {

struct MixerOption {
  std::string name;
  OptionValue value;  // default; its type is the option's type
  std::string doc;
  double lo = -1e300, hi = 1e300;    // numbers
  std::vector<std::string> choices = {};  // strings: the accepted values (empty: any)
  bool shapes_model = false;         // changes the parameters (checked on resume)
};

struct MixerKind {
  std::string name;
  std::string doc;
  std::vector<MixerOption> options;
  bool needs_contiguous = false;  // parallel.layout auto picks contiguous shards
  // Keeps every token to its packed document (data.documents). false: validation refuses
  // data.documents with this kind, and the conformance suite has no packed case for it.
  bool documents = true;
  // Has CUDA kernels. false: validation refuses train.device = cuda with this kind, and the GPU
  // conformance suite skips it.
  bool cuda = true;
  // Parameters shaped by data.seq_len: validation refuses eval.seq_len other than data.seq_len.
  bool fixed_length = false;
  // Its layers split model.dim into model.n_heads attention heads: on a GPU the head dim must
  // then be one of the CUDA attention kernels' (64, 128). false: heads of its own (mamba).
  bool attention_heads = true;
  // Checks `c` for a model with this kind in some layer; errors name the keys.
  std::function<void(const Config& c)> validate;
  // The mixer of one layer, on the mesh's groups and the layout (both outlive it).
  std::function<std::unique_ptr<mixers::Mixer>(const Config& c, dist::Mesh& mesh, const dist::Layout& layout)> make;
  // Option overrides ("mixer.<kind>.<name>=value", "model.position=alibi", ...) that the
  // conformance suite runs this kind with, besides the defaults.
  std::vector<std::vector<std::string>> test_variants;
  // Overrides every conformance case of this kind starts from (a kind whose defaults are
  // refused in a causal LM: linformer needs mixer.linformer.bidirectional=true).
  std::vector<std::string> test_base = {};
  // Overrides the GPU conformance suite adds to each case of this kind, given the case's config
  // (none when empty): a kind with a discrete choice made from computed scores (nsa's top-n
  // blocks) is compared with the choice left no freedom, since bf16 rounding flips near-tied
  // picks; the scores then have a GPU test of their own.
  std::function<std::vector<std::string>(const Config& c)> test_gpu;
};

const std::vector<MixerKind>& mixer_kinds();
// The kind called `name`; an error listing the registered kinds names `key` otherwise.
const MixerKind& mixer_kind(const std::string& name, const std::string& key = "model.mixers");

}  // namespace lctx::train
