#include "trainers/mixer_registry.h"

#include "dist/layout.h"
#include "dist/mesh.h"
#include "mixers/linear_attention.h"
#include "mixers/linformer.h"
#include "mixers/local_global.h"
#include "mixers/mamba.h"
#include "mixers/mamba2.h"
#include "mixers/memory.h"
#include "mixers/nsa.h"
#include "ssm/causal_conv1d.h"
#include "ssm/selective_scan_params.h"
#include "mixers/softmax.h"
#include "mixers/strided.h"

namespace lctx::train {

namespace {

// The q/k/v part every attention-like kind shares, from model.*.
mixers::AttentionCoreOptions core_options(const Config& c) {
  const auto& m = c.model;
  mixers::AttentionCoreOptions o;
  o.shape = {m.dim, m.n_heads, m.kv_heads(), m.head_size()};
  o.position = m.position == "rope"    ? mixers::Position::rope
               : m.position == "alibi" ? mixers::Position::alibi
                                       : mixers::Position::none;
  o.rope_theta = m.rope_theta;
  o.norm_eps = m.norm_eps;
  return o;
}

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
  mixers::SoftmaxOptions o;
  o.core = core_options(c);
  o.core.qk_norm = c.mixer_option<bool>("softmax", "qk_norm") ? mixers::QkNorm::rms : mixers::QkNorm::off;
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

// ---- linear, performer ----------------------------------------------------------------------

// What the linear kinds check besides their options: RoPE or no positions.
void validate_linear_common(const Config& c, const std::string& kind) {
  LCTX_CHECK(c.model.position != "alibi", "config: model.position = alibi is a softmax bias; mixer kind ", kind,
             " needs rope or none");
  LCTX_CHECK(c.model.position != "rope" || c.model.head_size() % 2 == 0,
             "config: RoPE needs an even head dim; model.head_dim is ", c.model.head_size());
}

// linear, performer: a short conv of width 0 (none) or 2..kMaxConvWidth.
void validate_short_conv(const Config& c, const std::string& kind) {
  const int64_t w = c.mixer_option<int64_t>(kind, "short_conv");
  LCTX_CHECK(w != 1, "config: mixer.", kind, ".short_conv = 1 is a per-channel scale, not a conv; use 0 (none) or 2..",
             ssm::kMaxConvWidth);
}

MixerOption short_conv_option() {
  return {.name = "short_conv",
          .value = int64_t{0},
          .doc = "width of a causal depthwise conv + SiLU over the projected q, k, v (fla's short convolution; lets "
                 "a layer see the previous tokens, as recall tasks need); 0 = none",
          .lo = 0,
          .hi = ssm::kMaxConvWidth,
          .shapes_model = true};
}

void validate_linear(const Config& c) {
  validate_linear_common(c, "linear");
  validate_short_conv(c, "linear");
  LCTX_CHECK(!(c.mixer_option<std::string>("linear", "feature_map") == "identity" &&
               c.mixer_option<bool>("linear", "normalize")),
             "config: mixer.linear.normalize = true with mixer.linear.feature_map = identity: the normaliser ",
             "phi(q) . z can be zero or negative; use elu or relu, or normalize: false");
}

linear_attn::Decay linear_decay(const std::string& d) {
  if (d == "fixed") return linear_attn::Decay::fixed;
  if (d == "learned") return linear_attn::Decay::learned;
  if (d == "data") return linear_attn::Decay::data;
  return linear_attn::Decay::none;
}

std::unique_ptr<mixers::Mixer> make_linear(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::LinearAttentionOptions o;
  o.core = core_options(c);
  const std::string& fm = c.mixer_option<std::string>("linear", "feature_map");
  o.feature = fm == "relu"       ? linear_attn::FeatureKind::relu
              : fm == "identity" ? linear_attn::FeatureKind::identity
                                 : linear_attn::FeatureKind::elu_plus_one;
  o.decay = linear_decay(c.mixer_option<std::string>("linear", "decay"));
  o.normalize = c.mixer_option<bool>("linear", "normalize") ? linear_attn::Normalize::on : linear_attn::Normalize::off;
  o.chunk = c.mixer_option<int64_t>("linear", "chunk");
  o.core.short_conv = c.mixer_option<int64_t>("linear", "short_conv");
  o.output_norm = c.mixer_option<bool>("linear", "output_norm") ? mixers::OutputNorm::rms : mixers::OutputNorm::off;
  return mixers::make_linear_attention_mixer(o, mesh, layout);
}

MixerOption chunk_option() {
  return {.name = "chunk",
          .value = int64_t{64},
          .doc = "tokens per chunk of the chunked causal kernel (any size; the result does not depend on it beyond "
                 "rounding)",
          .lo = 1,
          .hi = 1 << 20};
}

MixerKind linear_kind() {
  MixerKind k;
  k.name = "linear";
  k.doc = "causal linear attention (feature map, optional per-head or per-token decay, optional normalisation; "
          "sequence parallel through a state scan on any layout)";
  k.options = {
      {.name = "feature_map",
       .value = std::string("elu"),
       .doc = "phi applied to q and k: elu (elu + 1), relu or identity",
       .choices = {"elu", "relu", "identity"},
       .shapes_model = true},
      {.name = "decay",
       .value = std::string("none"),
       .doc = "state decay: none, fixed (per head 1 - 2^(-5-h), retention), learned (a per-head sigmoid), data (a "
              "per-token gate sigmoid(x W_g + b_g) per head)",
       .choices = {"none", "fixed", "learned", "data"},
       .shapes_model = true},
      {.name = "normalize",
       .value = true,
       .doc = "divide each output by phi(q) . z, z the decayed sum of phi(k)",
       .shapes_model = true},
      {.name = "output_norm",
       .value = false,
       .doc = "RMSNorm of each head's output with a learned weight (TransNormer, GLA; usually with normalize: false)",
       .shapes_model = true},
      chunk_option(),
      short_conv_option(),
  };
  k.documents = false;
  k.cuda = true;
  k.validate = validate_linear;
  k.make = make_linear;
  k.test_variants = {
      {"mixer.linear.feature_map=relu", "mixer.linear.decay=fixed", "mixer.linear.normalize=false"},
      {"mixer.linear.feature_map=identity", "mixer.linear.decay=learned", "mixer.linear.normalize=false",
       "model.position=none", "mixer.linear.chunk=5"},
      {"mixer.linear.decay=data", "mixer.linear.chunk=7", "mixer.linear.short_conv=4"},
      {"mixer.linear.normalize=false", "mixer.linear.output_norm=true"},
  };
  return k;
}

std::unique_ptr<mixers::Mixer> make_performer(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::LinearAttentionOptions o;
  o.core = core_options(c);
  o.feature = linear_attn::FeatureKind::favor;
  o.features = c.mixer_option<int64_t>("performer", "features");
  o.redraw_every = c.mixer_option<int64_t>("performer", "redraw_every");
  o.seed = static_cast<uint64_t>(c.mixer_option<int64_t>("performer", "seed"));
  o.chunk = c.mixer_option<int64_t>("performer", "chunk");
  o.core.short_conv = c.mixer_option<int64_t>("performer", "short_conv");
  return mixers::make_linear_attention_mixer(o, mesh, layout);
}

MixerKind performer_kind() {
  MixerKind k;
  k.name = "performer";
  k.doc = "causal Performer: linear attention on FAVOR+ positive orthogonal random features (softmax kernel "
          "estimate, normalised), the same features on every rank, redrawn in lockstep";
  k.options = {
      {.name = "features",
       .value = int64_t{linear_attn::kFavorFeatures},
       .doc = "random features m per head (the state is m x (head_dim + 1) per head)",
       .lo = 1,
       .hi = 1 << 16,
       .shapes_model = true},
      {.name = "redraw_every",
       .value = int64_t{0},
       .doc = "draw new random features every this many steps (the draw is a function of mixer.performer.seed and "
              "the step, both in every checkpoint, so resume is exact); 0 = drawn once",
       .lo = 0,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "seed",
       .value = int64_t{0},
       .doc = "seed of the random features, shared by every rank and layer",
       .lo = 0,
       .hi = 1e15,
       .shapes_model = true},
      chunk_option(),
      short_conv_option(),
  };
  k.documents = false;
  k.cuda = true;
  k.validate = [](const Config& c) {
    validate_linear_common(c, "performer");
    validate_short_conv(c, "performer");
  };
  k.make = make_performer;
  k.test_variants = {
      {"mixer.performer.features=24", "model.position=none", "mixer.performer.chunk=5"},
      {"mixer.performer.features=16", "mixer.performer.short_conv=3"},
  };
  return k;
}

// ---- linformer ------------------------------------------------------------------------------

void validate_linformer(const Config& c) {
  LCTX_CHECK(c.mixer_option<bool>("linformer", "bidirectional"),
             "config: mixer kind linformer is bidirectional only (each projected row mixes every position, so a token ",
             "sees the future) and lctx-train trains causal LMs: mixer.linformer.bidirectional is false. Set ",
             "mixer.linformer.bidirectional: true to use it anyway (the next-token loss then leaks the targets)");
  validate_linear_common(c, "linformer");
}

std::unique_ptr<mixers::Mixer> make_linformer(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::LinformerMixerOptions o;
  o.core = core_options(c);
  o.rows = c.mixer_option<int64_t>("linformer", "k");
  o.max_len = c.data.seq_len;
  return mixers::make_linformer_mixer(o, mesh, layout);
}

MixerKind linformer_kind() {
  MixerKind k;
  k.name = "linformer";
  k.doc = "Linformer: keys and values projected along the sequence by learned E, F [k, data.seq_len], exact "
          "softmax over the k rows; bidirectional only (needs mixer.linformer.bidirectional)";
  k.options = {
      {.name = "k",
       .value = int64_t{64},
       .doc = "projected rows of E and F (each [k, data.seq_len])",
       .lo = 1,
       .hi = 1 << 20,
       .shapes_model = true},
      {.name = "bidirectional",
       .value = false,
       .doc = "the key that decides causality: Linformer has no causal form, so it is refused unless this is true "
              "(every token then sees the whole sequence, the future included)"},
  };
  k.documents = false;
  k.cuda = true;
  k.fixed_length = true;  // E, F are [k, data.seq_len]
  k.validate = validate_linformer;
  k.make = make_linformer;
  k.test_base = {"mixer.linformer.bidirectional=true"};
  k.test_variants = {
      {"mixer.linformer.k=5", "model.position=none"},
  };
  return k;
}

// ---- mamba ----------------------------------------------------------------------------------

// The conv width and expansion options the Mamba kinds share.
MixerOption conv_option(std::string doc) {
  return {.name = "d_conv", .value = int64_t{4}, .doc = std::move(doc), .lo = 2, .hi = ssm::kMaxConvWidth, .shapes_model = true};
}
MixerOption expand_option() {
  return {.name = "expand", .value = int64_t{2}, .doc = "d_inner = expand x model.dim", .lo = 1, .hi = 64, .shapes_model = true};
}

std::unique_ptr<mixers::Mixer> make_mamba(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::MambaOptions o;
  o.dim = c.model.dim;
  o.d_state = c.mixer_option<int64_t>("mamba", "d_state");
  o.d_conv = c.mixer_option<int64_t>("mamba", "d_conv");
  o.expand = c.mixer_option<int64_t>("mamba", "expand");
  o.dt_rank = c.mixer_option<int64_t>("mamba", "dt_rank");
  return mixers::make_mamba_mixer(o, mesh, layout);
}

MixerKind mamba_kind() {
  MixerKind k;
  k.name = "mamba";
  k.doc = "Mamba-1 selective state-space layer (in_proj, causal depthwise conv + SiLU, input-dependent dt, B, C, "
          "selective scan with D skip and SiLU(z) gate, out_proj; sequence parallel through a conv halo and a state "
          "scan on any layout)";
  k.options = {
      {.name = "d_state",
       .value = int64_t{16},
       .doc = "states N per inner channel (the state is d_inner x d_state per sequence)",
       .lo = 1,
       .hi = ssm::kMaxStateCpu,
       .shapes_model = true},
      conv_option("width of the causal depthwise conv (its d_conv - 1 rows of history cross rank boundaries as a halo)"),
      expand_option(),
      {.name = "dt_rank",
       .value = int64_t{0},
       .doc = "rank of the dt projection (x_proj -> dt_rank -> d_inner); 0 = ceil(model.dim / 16)",
       .lo = 0,
       .hi = 1 << 20,
       .shapes_model = true},
  };
  k.documents = false;
  k.cuda = true;
  k.attention_heads = false;
  k.validate = [](const Config&) {};
  k.make = make_mamba;
  k.test_variants = {
      {"mixer.mamba.d_state=5", "mixer.mamba.d_conv=3", "mixer.mamba.expand=1", "mixer.mamba.dt_rank=3"},
      {"mixer.mamba.d_conv=8"},
  };
  return k;
}

// ---- mamba2 ---------------------------------------------------------------------------------

void validate_mamba2(const Config& c) {
  const int64_t d_inner = c.mixer_option<int64_t>("mamba2", "expand") * c.model.dim;
  const int64_t P = c.mixer_option<int64_t>("mamba2", "head_dim"), G = c.mixer_option<int64_t>("mamba2", "groups");
  LCTX_CHECK(d_inner % P == 0, "config: mixer.mamba2.head_dim (", P, ") must divide d_inner = mixer.mamba2.expand x ",
             "model.dim = ", d_inner);
  LCTX_CHECK((d_inner / P) % G == 0, "config: mixer.mamba2.groups (", G, ") must divide the heads d_inner / ",
             "mixer.mamba2.head_dim = ", d_inner / P);
}

std::unique_ptr<mixers::Mixer> make_mamba2(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::Mamba2Options o;
  o.dim = c.model.dim;
  o.d_state = c.mixer_option<int64_t>("mamba2", "d_state");
  o.d_conv = c.mixer_option<int64_t>("mamba2", "d_conv");
  o.expand = c.mixer_option<int64_t>("mamba2", "expand");
  o.head_dim = c.mixer_option<int64_t>("mamba2", "head_dim");
  o.groups = c.mixer_option<int64_t>("mamba2", "groups");
  o.chunk = c.mixer_option<int64_t>("mamba2", "chunk");
  o.norm_eps = c.model.norm_eps;
  return mixers::make_mamba2_mixer(o, mesh, layout);
}

MixerKind mamba2_kind() {
  MixerKind k;
  k.name = "mamba2";
  k.doc = "Mamba-2 (SSD) layer: in_proj to z, x, B, C (G groups), dt per head; causal depthwise conv + SiLU over "
          "x, B, C; SSD with a scalar decay per head and D skip (chunked linear attention); gated RMSNorm per "
          "group of d_inner / groups channels; out_proj; sequence parallel as mamba";
  k.options = {
      {.name = "d_state",
       .value = int64_t{128},
       .doc = "states N per head (the state is N x head_dim per head)",
       .lo = 1,
       .hi = 1 << 16,
       .shapes_model = true},
      conv_option("width of the causal depthwise conv over x, B and C (its d_conv - 1 rows of history cross rank "
                  "boundaries as a halo)"),
      expand_option(),
      {.name = "head_dim",
       .value = int64_t{64},
       .doc = "channels P per head (heads = d_inner / head_dim; must divide d_inner)",
       .lo = 1,
       .hi = 1 << 16,
       .shapes_model = true},
      {.name = "groups",
       .value = int64_t{1},
       .doc = "groups G of B and C, each shared by heads / G heads (must divide the heads)",
       .lo = 1,
       .hi = 1 << 16,
       .shapes_model = true},
      chunk_option(),
  };
  k.documents = false;
  k.cuda = true;
  k.attention_heads = false;  // mixer.mamba2.head_dim is its own
  k.validate = validate_mamba2;
  k.make = make_mamba2;
  k.test_base = {"mixer.mamba2.head_dim=8", "mixer.mamba2.d_state=8"};
  k.test_variants = {
      {"mixer.mamba2.groups=2", "mixer.mamba2.head_dim=4", "mixer.mamba2.d_state=3", "mixer.mamba2.chunk=5",
       "mixer.mamba2.d_conv=8"},
  };
  return k;
}

// ---- strided --------------------------------------------------------------------------------

void validate_strided(const Config& c) {
  const int64_t w = c.mixer_option<int64_t>("strided", "window"), S = c.data.seq_len;
  LCTX_CHECK(c.model.position != "alibi", "config: model.position = alibi is not supported by mixer kind strided ",
             "(its strided part runs in residue coordinates); use rope or none");
  LCTX_CHECK(c.model.position != "rope" || c.model.head_size() % 2 == 0,
             "config: RoPE needs an even head dim; model.head_dim is ", c.model.head_size());
  LCTX_CHECK(w <= S, "config: mixer.strided.window (", w, ") is larger than the sequence (data.seq_len = ", S, ")");
}

std::unique_ptr<mixers::Mixer> make_strided(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::StridedMixerOptions o;
  o.core = core_options(c);
  o.core.qk_norm = c.mixer_option<bool>("strided", "qk_norm") ? mixers::QkNorm::rms : mixers::QkNorm::off;
  o.window = c.mixer_option<int64_t>("strided", "window");
  o.stride = c.mixer_option<int64_t>("strided", "stride");
  return mixers::make_strided_mixer(o, mesh, layout);
}

MixerKind strided_kind() {
  MixerKind k;
  k.name = "strided";
  k.doc = "Sparse Transformer strided attention, causal: a window of w keys plus every earlier key with (i - j) mod "
          "s == 0 (two layers reach every position), as two flash calls merged by LSE; sequence parallel by one "
          "all-gather of K/V on any layout; RoPE or no positions";
  k.options = {
      {.name = "window",
       .value = int64_t{64},
       .doc = "w: each token attends to itself and the w - 1 tokens before it (at most data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "stride",
       .value = int64_t{64},
       .doc = "s: plus every earlier token at a distance that is a multiple of s",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "qk_norm",
       .value = false,
       .doc = "RMSNorm over each head's q and k (weights shared by the heads)",
       .shapes_model = true},
  };
  k.documents = false;
  k.cuda = true;
  k.validate = validate_strided;
  k.make = make_strided;
  k.test_base = {"mixer.strided.window=5", "mixer.strided.stride=4"};
  k.test_variants = {
      {"mixer.strided.window=3", "mixer.strided.stride=7", "model.position=none"},
      {"mixer.strided.window=13", "mixer.strided.stride=2", "mixer.strided.qk_norm=true"},
  };
  return k;
}

// ---- local_global ----------------------------------------------------------------------------

void validate_local_global(const Config& c) {
  const int64_t w = c.mixer_option<int64_t>("local_global", "window"), S = c.data.seq_len;
  const int64_t g = c.mixer_option<int64_t>("local_global", "global_tokens");
  const int64_t p = c.mixer_option<int64_t>("local_global", "first_tokens");
  LCTX_CHECK(c.model.position != "alibi", "config: model.position = alibi is not supported by mixer kind local_global ",
             "(a bias on distances; its global tokens have no position); use rope or none");
  LCTX_CHECK(c.model.position != "rope" || c.model.head_size() % 2 == 0,
             "config: RoPE needs an even head dim; model.head_dim is ", c.model.head_size());
  LCTX_CHECK(w <= S, "config: mixer.local_global.window (", w, ") is larger than the sequence (data.seq_len = ", S, ")");
  LCTX_CHECK(g <= S, "config: mixer.local_global.global_tokens (", g, ") is more than the positions of the sequence ",
             "(data.seq_len = ", S, ")");
  LCTX_CHECK(p <= S, "config: mixer.local_global.first_tokens (", p, ") is more than the positions of the sequence ",
             "(data.seq_len = ", S, ")");
  LCTX_CHECK(p == 0 || c.mixer_option<bool>("local_global", "causal"), "config: mixer.local_global.first_tokens (", p,
             ") needs mixer.local_global.causal = true; the bidirectional form has learned global tokens only");
  LCTX_CHECK(c.parallel.ulysses == 1, "config: mixer kind local_global needs parallel.ulysses = 1 (got ",
             c.parallel.ulysses, "): its window is sharded over a ring");
  const int64_t r = c.mixer_option<int64_t>("local_global", "random_blocks");
  const int64_t rb = c.mixer_option<int64_t>("local_global", "random_block_size");
  if (r == 0) return;
  LCTX_CHECK(rb <= S, "config: mixer.local_global.random_block_size (", rb, ") is larger than the sequence ",
             "(data.seq_len = ", S, ")");
  const std::string kind = resolved_layout(c);
  const int ring = static_cast<int>(c.parallel.sp);
  if (ring < 1 || S % (kind == "zigzag" ? 2 * ring : ring) != 0) return;  // the layout's own check reports it
  const dist::Layout layout(kind == "zigzag" ? dist::LayoutKind::zigzag : dist::LayoutKind::contiguous, S, ring);
  const int64_t bad = mixers::local_global_misfit_segment(layout, rb);
  LCTX_CHECK(bad == 0, "config: mixer.local_global.random_block_size (", rb, ") must divide the segment length of ",
             "the ", kind, " layout over parallel.sp = ", ring, " ranks (a segment of ", bad,
             " positions): a query block must lie in one segment");
}

std::unique_ptr<mixers::Mixer> make_local_global(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::LocalGlobalOptions o;
  o.core = core_options(c);
  o.form = c.mixer_option<bool>("local_global", "causal") ? mixers::LocalGlobalForm::causal
                                                           : mixers::LocalGlobalForm::bidirectional;
  o.window = c.mixer_option<int64_t>("local_global", "window");
  o.global_tokens = c.mixer_option<int64_t>("local_global", "global_tokens");
  o.first_tokens = c.mixer_option<int64_t>("local_global", "first_tokens");
  o.random_blocks = c.mixer_option<int64_t>("local_global", "random_blocks");
  o.random_block_size = c.mixer_option<int64_t>("local_global", "random_block_size");
  o.random_seed = static_cast<uint64_t>(c.mixer_option<int64_t>("local_global", "random_seed"));
  return mixers::make_local_global_mixer(o, mesh, layout);
}

MixerKind local_global_kind() {
  MixerKind k;
  k.name = "local_global";
  k.doc = "sliding window plus global tokens (exact softmax, parts merged by LSE): causal with g learned sink tokens "
          "and the first p positions seen by every later query, or bidirectional with g learned global tokens that "
          "read the whole sequence and are read by every token (Longformer/ETC); sequence parallel by the window's "
          "neighbours, a row gather of the first p rows and an fp32 merge of the global queries; RoPE or no "
          "positions";
  k.options = {
      {.name = "window",
       .value = int64_t{128},
       .doc = "w: causal, each token sees itself and the w - 1 tokens before it; bidirectional, the tokens at a "
              "distance < w on both sides (at most data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "global_tokens",
       .value = int64_t{4},
       .doc = "g learned tokens per layer (a [g, model.dim] parameter through the layer's q/k/v projection at "
              "position 0): causal, sinks every query sees; bidirectional, global tokens that attend to every "
              "token and are attended by every token",
       .lo = 0,
       .hi = 1 << 20,
       .shapes_model = true},
      {.name = "causal",
       .value = true,
       .doc = "true: the causal (LM) form; false: the bidirectional (encoder) form, where every token sees its "
              "window on both sides and the future (the next-token loss then leaks the targets)",
       .shapes_model = true},
      {.name = "first_tokens",
       .value = int64_t{0},
       .doc = "p (causal form only): the first p positions are seen by every later query beyond its window",
       .lo = 0,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "random_blocks",
       .value = int64_t{0},
       .doc = "r BigBird random key blocks per query block, drawn among the blocks no other part reaches (causal: "
              "before the window and after the first p positions; bidirectional: outside the window); 0 = none",
       .lo = 0,
       .hi = 1 << 20,
       .shapes_model = false},
      {.name = "random_block_size",
       .value = int64_t{64},
       .doc = "rb positions per random block (query and key blocks); must divide the layout's segment length "
              "(data.seq_len / parallel.sp, or half that zigzag)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = false},
      {.name = "random_seed",
       .value = int64_t{0},
       .doc = "seed of the random blocks, redrawn every step as a function of it and the step (the same on every "
              "rank, layer and head; resume is exact)",
       .lo = 0,
       .hi = 1e15,
       .shapes_model = false},
  };
  k.documents = false;
  k.cuda = true;
  k.validate = validate_local_global;
  k.make = make_local_global;
  k.test_base = {"mixer.local_global.window=7", "mixer.local_global.global_tokens=3"};
  k.test_variants = {
      {"mixer.local_global.global_tokens=0", "mixer.local_global.first_tokens=5", "model.position=none"},
      {"mixer.local_global.window=13", "mixer.local_global.first_tokens=9"},
      {"mixer.local_global.causal=false"},
      {"mixer.local_global.causal=false", "mixer.local_global.window=20", "mixer.local_global.global_tokens=0",
       "model.position=none"},
      // Random blocks of 1 position: every layout of the suite's 48 tokens fits (larger blocks in
      // test_local_global).
      {"mixer.local_global.window=5", "mixer.local_global.first_tokens=4", "mixer.local_global.random_blocks=3",
       "mixer.local_global.random_block_size=1"},
      {"mixer.local_global.causal=false", "mixer.local_global.window=6", "mixer.local_global.random_blocks=2",
       "mixer.local_global.random_block_size=1", "mixer.local_global.random_seed=9"},
  };
  return k;
}

// ---- memory ---------------------------------------------------------------------------------

void validate_memory(const Config& c) {
  const int64_t w = c.mixer_option<int64_t>("memory", "window"), b = c.mixer_option<int64_t>("memory", "block");
  const int64_t S = c.data.seq_len;
  LCTX_CHECK(c.model.position != "alibi", "config: model.position = alibi is not supported by mixer kind memory ",
             "(a bias on distances; its memory tokens and compressed rows have none); use rope or none");
  LCTX_CHECK(c.model.position != "rope" || c.model.head_size() % 2 == 0,
             "config: RoPE needs an even head dim; model.head_dim is ", c.model.head_size());
  LCTX_CHECK(w <= S, "config: mixer.memory.window (", w, ") is larger than the sequence (data.seq_len = ", S, ")");
  LCTX_CHECK(b <= S, "config: mixer.memory.block (", b, ") is larger than the sequence (data.seq_len = ", S,
             "): no block would be compressed");
  LCTX_CHECK(c.parallel.ulysses == 1, "config: mixer kind memory needs parallel.ulysses = 1 (got ", c.parallel.ulysses,
             "): its window is sharded over a ring");
}

std::unique_ptr<mixers::Mixer> make_memory(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::MemoryOptions o;
  o.core = core_options(c);
  o.window = c.mixer_option<int64_t>("memory", "window");
  o.memory_tokens = c.mixer_option<int64_t>("memory", "memory_tokens");
  o.block = c.mixer_option<int64_t>("memory", "block");
  o.fusion = c.mixer_option<std::string>("memory", "fusion") == "gate" ? mixers::MemoryFusion::gate
                                                                       : mixers::MemoryFusion::ratio;
  o.fusion_ratio = c.mixer_option<double>("memory", "fusion_ratio");
  return mixers::make_memory_mixer(o, mesh, layout);
}

MixerKind memory_kind() {
  MixerKind k;
  k.name = "memory";
  k.doc = "cross-memory attention, causal: a sliding window softmax fused with a second softmax over M learned "
          "memory tokens and the mean-pooled blocks of b tokens that ended before the query, o = (1 - r) o_local + "
          "r o_memory with a fixed ratio or a learned per-head gate; sequence parallel by the window's neighbours "
          "and one all-reduce of the S / b compressed rows on any layout; RoPE or no positions";
  k.options = {
      {.name = "window",
       .value = int64_t{128},
       .doc = "w: the local softmax sees the token itself and the w - 1 tokens before it (at most data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "memory_tokens",
       .value = int64_t{4},
       .doc = "M learned memory tokens per layer (a [M, model.dim] parameter through the layer's q/k/v projection "
              "at position 0), seen by every query's memory softmax",
       .lo = 0,
       .hi = 1 << 20,
       .shapes_model = true},
      {.name = "block",
       .value = int64_t{32},
       .doc = "b: the sequence is cut into blocks of b tokens, each compressed into one K/V row (the mean of its "
              "K and of its V rows) that the queries after the block see (position >= (c + 1) b for block c; at most "
              "data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "fusion",
       .value = std::string("ratio"),
       .doc = "how o_local and o_memory are fused: ratio (the fixed mixer.memory.fusion_ratio) or gate (r = "
              "sigmoid(x W_g + b_g), learned, per head and token)",
       .choices = {"ratio", "gate"},
       .shapes_model = true},
      {.name = "fusion_ratio",
       .value = 0.5,
       .doc = "r of fusion: ratio, o = (1 - r) o_local + r o_memory (0: window only, 1: memory only)",
       .lo = 0,
       .hi = 1,
       .shapes_model = true},
  };
  k.documents = false;
  k.cuda = true;
  k.validate = validate_memory;
  k.make = make_memory;
  k.test_base = {"mixer.memory.window=5", "mixer.memory.memory_tokens=3", "mixer.memory.block=4"};
  k.test_variants = {
      {"mixer.memory.fusion=gate", "mixer.memory.block=7", "mixer.memory.window=9"},
      {"mixer.memory.memory_tokens=0", "mixer.memory.block=13", "mixer.memory.window=1",
       "mixer.memory.fusion_ratio=0.3", "model.position=none"},
  };
  return k;
}

// ---- nsa ------------------------------------------------------------------------------------

void validate_nsa(const Config& c) {
  const int64_t S = c.data.seq_len, w = c.mixer_option<int64_t>("nsa", "window");
  const int64_t bc = c.mixer_option<int64_t>("nsa", "compress_block"), bs = c.mixer_option<int64_t>("nsa", "select_block");
  const int64_t n = c.mixer_option<int64_t>("nsa", "top_n");
  LCTX_CHECK(c.model.position != "alibi", "config: model.position = alibi is not supported by mixer kind nsa ",
             "(a bias on distances; its compressed rows have none); use rope or none");
  LCTX_CHECK(c.model.position != "rope" || c.model.head_size() % 2 == 0,
             "config: RoPE needs an even head dim; model.head_dim is ", c.model.head_size());
  LCTX_CHECK(c.parallel.ulysses == 1, "config: mixer kind nsa needs parallel.ulysses = 1 (got ", c.parallel.ulysses,
             "): its window is sharded over a ring");
  LCTX_CHECK(w <= S, "config: mixer.nsa.window (", w, ") is larger than the sequence (data.seq_len = ", S, ")");
  LCTX_CHECK(bc <= S, "config: mixer.nsa.compress_block (", bc, ") is larger than the sequence (data.seq_len = ", S,
             "): no block would be compressed");
  const std::string layout = resolved_layout(c);
  const int64_t ring = c.parallel.sp / c.parallel.ulysses, parts = layout == "zigzag" ? 2 * ring : ring;
  LCTX_CHECK(S % parts == 0 && (S / parts) % bs == 0, "config: mixer.nsa.select_block (", bs,
             ") must divide the layout's local segments (data.seq_len = ", S, " over ", ring, " ring ranks, ", layout,
             ": ", parts, " segments of ", S / parts, " tokens) so that each query block lies on one rank");
  LCTX_CHECK(n <= S / bs, "config: mixer.nsa.top_n (", n, ") is above the number of selection blocks (data.seq_len / ",
             "mixer.nsa.select_block = ", S / bs, ")");
  LCTX_CHECK(c.mixer_option<std::string>("nsa", "compress") != "mlp" || (S % parts == 0 && (S / parts) % bc == 0),
             "config: mixer.nsa.compress_block (", bc, ") must divide the layout's local segments with ",
             "mixer.nsa.compress = mlp (data.seq_len = ", S, " over ", ring, " ring ranks, ", layout, ": ", parts,
             " segments of ", S / parts, " tokens) so that each compressed block lies on one rank");
}

std::unique_ptr<mixers::Mixer> make_nsa(const Config& c, dist::Mesh& mesh, const dist::Layout& layout) {
  mixers::NsaOptions o;
  o.core = core_options(c);
  o.window = c.mixer_option<int64_t>("nsa", "window");
  o.compress_block = c.mixer_option<int64_t>("nsa", "compress_block");
  o.compress = c.mixer_option<std::string>("nsa", "compress") == "mlp" ? mixers::NsaCompress::mlp
                                                                       : mixers::NsaCompress::mean;
  o.compress_hidden = c.mixer_option<int64_t>("nsa", "compress_hidden");
  o.select_block = c.mixer_option<int64_t>("nsa", "select_block");
  o.top_n = c.mixer_option<int64_t>("nsa", "top_n");
  return mixers::make_nsa_mixer(o, mesh, layout);
}

MixerKind nsa_kind() {
  MixerKind k;
  k.name = "nsa";
  k.doc = "DeepSeek Native Sparse Attention, causal: a compressed branch over the blocks of the past (mean-pooled "
          "or a learned MLP), a selected branch over the top-n key blocks the compressed scores pick per query block "
          "and GQA group (block 0 and the local block always), and a sliding window, mixed by learned sigmoid gates "
          "per head and token; "
          "sequence parallel by the window's neighbours, one all-reduce of the compressed rows and a row gather of "
          "the picked blocks; RoPE or no positions";
  k.options = {
      {.name = "window",
       .value = int64_t{128},
       .doc = "w: the window branch sees the token itself and the w - 1 tokens before it (at most data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "compress_block",
       .value = int64_t{32},
       .doc = "b_c: the compressed branch's blocks of b_c tokens, each one K/V row, seen by the queries at or after "
              "the block's last token (at most data.seq_len)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "compress",
       .value = std::string("mean"),
       .doc = "how a block is compressed: mean (the mean of its K and of its V rows) or mlp (NSA's learned MLP, "
              "separately for K and V: W2 gelu(W1 concat(rows + a learned position embedding) + b1) + b2, shared by "
              "the KV heads; mixer.nsa.compress_block must then divide the layout's local segments)",
       .choices = {"mean", "mlp"},
       .shapes_model = true},
      {.name = "compress_hidden",
       .value = int64_t{64},
       .doc = "hidden width of the compression MLP (mixer.nsa.compress = mlp; parameters per layer: 2 x (hidden x "
              "(compress_block + 1) x head_dim + compress_block x head_dim + hidden + head_dim))",
       .lo = 1,
       .hi = 1 << 20,
       .shapes_model = true},
      {.name = "select_block",
       .value = int64_t{64},
       .doc = "b_s: query and key blocks of the selected branch (must divide the layout's local segments: "
              "data.seq_len / (2 x ring ranks) under zigzag, data.seq_len / ring ranks contiguous)",
       .lo = 1,
       .hi = 1e15,
       .shapes_model = true},
      {.name = "top_n",
       .value = int64_t{4},
       .doc = "n: key blocks each query block attends to in the selected branch, block 0 and its own (causal) block "
              "included (in [2, data.seq_len / mixer.nsa.select_block])",
       .lo = 2,
       .hi = 1e15,
       .shapes_model = true},
  };
  k.documents = false;
  k.cuda = true;
  k.validate = validate_nsa;
  k.make = make_nsa;
  // select_block 1: the only size that divides the segments of every layout the suite runs
  // (48 tokens on 1-8 ranks); tests/mixers/test_nsa.cpp runs larger blocks.
  k.test_base = {"mixer.nsa.window=5", "mixer.nsa.compress_block=4", "mixer.nsa.select_block=1", "mixer.nsa.top_n=6"};
  k.test_variants = {
      {"mixer.nsa.compress_block=2", "mixer.nsa.top_n=3", "mixer.nsa.window=1", "model.position=none"},
      {"mixer.nsa.compress_block=7", "mixer.nsa.top_n=10", "mixer.nsa.window=9"},
      // The learned compression: blocks of 1 position, the only size that divides every segment.
      {"mixer.nsa.compress=mlp", "mixer.nsa.compress_block=1", "mixer.nsa.compress_hidden=5", "mixer.nsa.top_n=4"},
  };
  // On the GPU every block is picked (tests/mixers/test_nsa_scores_gpu.cpp tests the scores).
  k.test_gpu = [](const Config& c) {
    return std::vector<std::string>{"mixer.nsa.top_n=" +
                                    std::to_string(c.data.seq_len / c.mixer_option<int64_t>("nsa", "select_block"))};
  };
  return k;
}

}  // namespace

const std::vector<MixerKind>& mixer_kinds() {
  static const std::vector<MixerKind> kinds = {softmax_kind(),  linear_kind(), performer_kind(),
                                               linformer_kind(), mamba_kind(),  mamba2_kind(), strided_kind(),
                                               local_global_kind(), memory_kind(), nsa_kind()};
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
