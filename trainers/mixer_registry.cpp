#include "trainers/mixer_registry.h"

#include "dist/layout.h"
#include "dist/mesh.h"
#include "mixers/softmax.h"

namespace lctx::train {

namespace {

// ---- softmax ------------------------------------------------------------------------------

// mixer.softmax.sp resolved against the parallel layout: auto is local on one rank, ring
// without Ulysses, ulysses when all of sp is Ulysses, hybrid otherwise.
mixers::SeqParallel softmax_sp(const Config& c) {
  const std::string& s = c.mixer_option<std::string>("softmax", "sp");
  const auto& p = c.parallel;
  if (s == "auto") {
    if (p.sp == 1) return mixers::SeqParallel::local;
    if (p.ulysses == 1) return mixers::SeqParallel::ring;
    return p.ulysses == p.sp ? mixers::SeqParallel::ulysses : mixers::SeqParallel::hybrid;
  }
  if (s == "ring") return mixers::SeqParallel::ring;
  if (s == "ulysses") return mixers::SeqParallel::ulysses;
  if (s == "hybrid") return mixers::SeqParallel::hybrid;
  return mixers::SeqParallel::all_gather;
}

void validate_softmax(const Config& c) {
  const auto& m = c.model;
  const auto& p = c.parallel;
  const int64_t G = c.mixer_option<int64_t>("softmax", "head_groups");
  LCTX_CHECK(m.n_heads % G == 0 && m.kv_heads() % G == 0, "config: mixer.softmax.head_groups (", G,
             ") must divide model.n_heads (", m.n_heads, ") and model.n_kv_heads (", m.kv_heads(), ")");
  LCTX_CHECK(m.position != "rope" || m.head_size() % 2 == 0, "config: RoPE needs an even head dim; model.head_dim is ",
             m.head_size());
  const mixers::SeqParallel sp = softmax_sp(c);
  const std::string key = "config: mixer.softmax.sp = " + std::string(mixers::seq_parallel_name(sp));
  if (sp == mixers::SeqParallel::ring)
    LCTX_CHECK(p.ulysses == 1, key, " needs parallel.ulysses = 1 (got ", p.ulysses, "); use hybrid to combine both");
  if (sp == mixers::SeqParallel::ulysses)
    LCTX_CHECK(p.ulysses == p.sp, key, " needs parallel.ulysses = parallel.sp (got ulysses ", p.ulysses, ", sp ", p.sp,
               "); use hybrid for ulysses < sp");
  if (sp != mixers::SeqParallel::local && sp != mixers::SeqParallel::ring && p.ulysses > 1) {
    LCTX_CHECK(m.n_heads / G % p.ulysses == 0, "config: model.n_heads (", m.n_heads, ") / mixer.softmax.head_groups (", G,
               ") must be divisible by parallel.ulysses (", p.ulysses, ")");
    LCTX_CHECK(m.kv_heads() / G % p.ulysses == 0 || p.ulysses % (m.kv_heads() / G) == 0, "config: model.n_kv_heads (",
               m.kv_heads(), ") / mixer.softmax.head_groups (", G, ") and parallel.ulysses (", p.ulysses,
               ") must divide one another (KV heads are sharded or replicated over the Ulysses group)");
  }
  LCTX_CHECK(!(c.mixer_option<std::string>("softmax", "backend") == "cudnn" && c.train.device == "cpu"),
             "config: mixer.softmax.backend = cudnn needs a GPU (train.device cuda or auto); the CPU runs lctx's reference");
}

std::unique_ptr<mixers::Mixer> make_softmax(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  const auto& m = c.model;
  mixers::SoftmaxOptions o;
  o.core.shape = {m.dim, m.n_heads, m.kv_heads(), m.head_size()};
  o.core.position = m.position == "rope"    ? mixers::Position::rope
                    : m.position == "alibi" ? mixers::Position::alibi
                                            : mixers::Position::none;
  o.core.rope_theta = m.rope_theta;
  o.core.qk_norm = c.mixer_option<bool>("softmax", "qk_norm") ? mixers::QkNorm::rms : mixers::QkNorm::off;
  o.core.norm_eps = m.norm_eps;
  o.sp = softmax_sp(c);
  o.backend = attn::parse_attn_backend(c.mixer_option<std::string>("softmax", "backend"));
  o.head_groups = c.mixer_option<int64_t>("softmax", "head_groups");
  o.softmax_scale = c.mixer_option<double>("softmax", "softmax_scale");
  o.window = c.mixer_option<int64_t>("softmax", "window");
  return mixers::make_softmax_mixer(o, mesh, layout);
}

MixerKind softmax_kind() {
  MixerKind k;
  k.name = "softmax";
  k.doc = "causal softmax attention (GQA/MQA, RoPE or ALiBi, optional QK-norm and sliding window) over the "
          "sequence-parallel group";
  k.options = {
      {.name = "sp",
       .value = std::string("auto"),
       .doc = "sequence-parallel strategy: auto (local on one rank, ring without Ulysses, ulysses when "
              "parallel.ulysses = parallel.sp, else hybrid), ring (K/V around the ring), ulysses (all-to-all over "
              "heads), hybrid (Ulysses inside groups, ring across), all_gather (K/V gathered once)",
       .choices = {"auto", "ring", "ulysses", "hybrid", "all_gather"}},
      {.name = "backend",
       .value = std::string("auto"),
       .doc = "GPU attention implementation: auto (cuDNN fused attention where it supports the call, else lctx's "
              "kernels; env LCTX_ATTN_BACKEND), cudnn or lctx",
       .choices = {"auto", "cudnn", "lctx"}},
      {.name = "head_groups",
       .value = int64_t{1},
       .doc = "compute attention in this many groups of heads, one after another: same result, its temporaries "
              "(ring buffers, fp32 accumulators, cuDNN scratch) divided by the groups",
       .lo = 1,
       .hi = 1 << 20},
      {.name = "qk_norm",
       .value = false,
       .doc = "RMSNorm over each head's q and k (weights shared by the heads, as Qwen3 / OLMo-2)",
       .shapes_model = true},
      {.name = "softmax_scale",
       .value = 0.0,
       .doc = "score scale; 0 = 1/sqrt(head_dim)",
       .lo = 0,
       .shapes_model = true},
      {.name = "window",
       .value = int64_t{0},
       .doc = "sliding window: each token attends to itself and the window - 1 tokens before it; 0 = all earlier "
              "tokens",
       .lo = 0,
       .hi = 1e15,
       .shapes_model = true},
  };
  k.validate = validate_softmax;
  k.make = make_softmax;
  k.test_variants = {
      {"model.position=alibi", "mixer.softmax.head_groups=2"},
      {"mixer.softmax.qk_norm=true", "mixer.softmax.window=5"},
      {"mixer.softmax.sp=all_gather", "model.position=none"},
  };
  return k;
}

}  // namespace

const std::vector<MixerKind>& mixer_kinds() {
  static const std::vector<MixerKind> kinds = {softmax_kind()};
  return kinds;
}

const MixerKind& mixer_kind(const std::string& name, const std::string& key) {
  std::string names;
  for (const MixerKind& k : mixer_kinds()) {
    if (k.name == name) return k;
    names += (names.empty() ? "" : ", ") + k.name;
  }
  LCTX_FAIL("config: ", key, ": unknown mixer kind '", name, "' (registered kinds: ", names, ")");
}

MixerOptions default_mixer_options() {
  MixerOptions o;
  for (const MixerKind& k : mixer_kinds())
    for (const MixerOption& opt : k.options) o[k.name + "." + opt.name] = opt.value;
  return o;
}

}  // namespace lctx::train
