// Cross-field checks of a parsed Config: sizes that must fit together, the mixer kinds (each
// checked by its registry entry), the parallel layout, data and device rules.
#include <algorithm>

#include "core/error.h"
#include "trainers/config.h"
#include "trainers/mixer_registry.h"

namespace lctx::train {

namespace {

// data.documents and the keys each mode reads (a key of another mode would be silently unused).
void validate_documents(const Config& c, bool synthetic) {
  const DataConfig& d = c.data;
  const std::string mode = "config: data.documents = " + d.documents;
  if (d.documents == "eod") {
    LCTX_CHECK(d.source == "text" || d.source == "tokens", mode, " needs data.source text or tokens (got ", d.source,
               d.source == "hdf5" ? "; an hdf5 file gives its documents with data.documents: offsets)" : ")");
    LCTX_CHECK(d.eod_id >= 0, mode, " needs data.eod_id (the token id that ends a document)");
    LCTX_CHECK(d.eod_id < c.model.vocab_size, "config: data.eod_id (", d.eod_id, ") must be below model.vocab_size (",
               c.model.vocab_size, ")");
    LCTX_CHECK(d.source != "text" || d.eod_id < 256, "config: data.eod_id (", d.eod_id,
               ") must be a byte (0..255) with data.source = text");
  } else {
    LCTX_CHECK(d.eod_id == -1, "config: data.eod_id (", d.eod_id, ") is read only with data.documents: eod (",
               "data.documents is ", d.documents, ")");
  }
  if (d.documents == "offsets") {
    const bool token_file = d.source == "text" || d.source == "tokens";
    LCTX_CHECK(d.source == "hdf5", mode, " needs data.source hdf5 (got ", d.source, "): the offsets are a dataset of ",
               "the hdf5 file", token_file ? "; a token file gives its documents with data.documents: eod" : "");
    LCTX_CHECK(!d.offsets_dataset.empty(), mode, " needs data.offsets_dataset (the dataset of document start offsets)");
  }
  if (d.documents == "fixed") {
    LCTX_CHECK(d.document_len >= 1, mode, " needs data.document_len >= 1 (tokens per document), got ", d.document_len);
    LCTX_CHECK(d.document_len <= d.seq_len, "config: data.document_len (", d.document_len, ") must be at most data.seq_len (",
               d.seq_len, ")");
    LCTX_CHECK(!synthetic || d.seq_len % d.document_len == 0, "config: data.seq_len (", d.seq_len,
               ") must be a multiple of data.document_len (", d.document_len, ") with data.source = ", d.source,
               " (every document is one sample of the task)");
  } else {
    LCTX_CHECK(d.document_len == 0, "config: data.document_len (", d.document_len,
               ") is read only with data.documents: fixed (data.documents is ", d.documents, ")");
  }
  LCTX_CHECK(!d.reset_positions || d.documents != "none", "config: data.reset_positions restarts positions at each ",
             "document start and needs data.documents (eod, offsets or fixed); data.documents is none");
}

}  // namespace

void validate(const Config& c) {
  const auto& m = c.model;
  const auto& p = c.parallel;
  const auto& d = c.data;
  LCTX_CHECK(m.head_dim > 0 || m.dim % m.n_heads == 0, "config: model.dim (", m.dim, ") must be divisible by model.n_heads (",
             m.n_heads, "), or set model.head_dim");
  LCTX_CHECK(m.n_heads % m.kv_heads() == 0, "config: model.n_heads (", m.n_heads,
             ") must be divisible by model.n_kv_heads (", m.kv_heads(), ")");
  for (int64_t l : m.checkpoint_layers)
    LCTX_CHECK(l < m.n_layers, "config: model.activation_checkpointing names layer ", l, " but model.n_layers is ", m.n_layers,
               " (expected indices 0..", m.n_layers - 1, ")");
  // Mixer kinds (each checked by its registry entry once the parallel layout is known).
  const int64_t n_mixers = static_cast<int64_t>(m.mixers.size());
  LCTX_CHECK(n_mixers == 1 || n_mixers == m.n_layers, "config: model.mixers has ", n_mixers,
             " entries, expected 1 (every layer) or model.n_layers = ", m.n_layers);
  std::vector<const MixerKind*> used;
  for (int64_t i = 0; i < n_mixers; ++i) {
    const std::string key = n_mixers == 1 ? "model.mixers" : "model.mixers[" + std::to_string(i) + "]";
    const MixerKind& k = mixer_kind(m.mixers[i], key);
    if (std::find(used.begin(), used.end(), &k) == used.end()) used.push_back(&k);
  }
  // The parallel layout.
  LCTX_CHECK(p.sp % p.ulysses == 0, "config: parallel.ulysses (", p.ulysses, ") must divide parallel.sp (", p.sp, ")");
  const std::string layout = resolved_layout(c);
  if (layout == "zigzag")
    LCTX_CHECK(d.seq_len % (2 * p.sp) == 0, "config: data.seq_len (", d.seq_len, ") must be divisible by 2 * parallel.sp = ",
               2 * p.sp, " (zigzag sharding gives every rank two chunks", p.sp == 1 ? "; or set parallel.layout: contiguous" : "",
               ")");
  else
    LCTX_CHECK(d.seq_len % p.sp == 0, "config: data.seq_len (", d.seq_len, ") must be divisible by parallel.sp = ", p.sp,
               " (parallel.layout = contiguous)");
  for (const MixerKind* k : used) {
    LCTX_CHECK(k->documents || d.documents == "none", "config: data.documents = ", d.documents, ": mixer kind ", k->name,
               " (model.mixers) does not keep tokens to their documents (its state would run across document ",
               "starts); use data.documents: none with it");
    LCTX_CHECK(k->cuda || c.train.device != "cuda", "config: mixer kind ", k->name, " (model.mixers) runs on the CPU ",
               "only so far (no CUDA kernels yet); set train.device: cpu");
    k->validate(c);
  }

  LCTX_CHECK(d.batch_size % p.dp == 0, "config: data.batch_size (", d.batch_size, ") must be divisible by parallel.dp (", p.dp, ")");
  LCTX_CHECK(p.simulate == 0 || p.simulate == p.world(), "config: parallel.simulate (", p.simulate,
             ") must equal the world size parallel.dp * parallel.sp = ", p.world());
  LCTX_CHECK(p.simulate == 0 || p.backend == "auto" || p.backend == "sim", "config: parallel.backend = ", p.backend,
             " cannot simulate ranks; use auto or sim with parallel.simulate");
  LCTX_CHECK(p.backend != "sim" || p.simulate > 0 || p.world() == 1, "config: parallel.backend = sim needs parallel.simulate = ",
             p.world());

  // Data. A synthetic sample fills the sequence or, packed (data.documents = fixed), one
  // document, whose last token predicts nothing: it holds data.document_len - 1 predictions.
  const bool synthetic = d.source == "passkey" || d.source == "mqar" || d.source == "selective_copy";
  validate_documents(c, synthetic);
  const bool packed = synthetic && d.documents == "fixed";
  const std::string len_key = packed ? "data.document_len" : "data.seq_len";
  const int64_t len = packed ? d.document_len : d.seq_len, extra = packed ? 1 : 0;
  if (d.source == "passkey") {
    LCTX_CHECK(m.vocab_size >= 16, "config: data.source = passkey needs model.vocab_size >= 16 (got ", m.vocab_size, ")");
    LCTX_CHECK(len >= 2 * d.passkey_digits + 8 + extra, "config: ", len_key, " (", len, ") is too short for a ",
               d.passkey_digits, "-digit passkey (need >= ", 2 * d.passkey_digits + 8 + extra, ")");
  } else if (d.source == "mqar") {
    LCTX_CHECK(m.vocab_size >= 2 * d.mqar_pairs + 1, "config: data.source = mqar with data.mqar.pairs = ", d.mqar_pairs,
               " needs model.vocab_size >= ", 2 * d.mqar_pairs + 1);
    LCTX_CHECK(d.mqar_queries <= d.mqar_pairs, "config: data.mqar.queries (", d.mqar_queries,
               ") must be <= data.mqar.pairs (", d.mqar_pairs, ")");
    LCTX_CHECK(len >= 2 * d.mqar_pairs + 2 * d.mqar_queries + 1 + extra, "config: ", len_key, " (", len,
               ") is too short for data.mqar: need >= 2 * pairs + 2 * queries + ", 1 + extra, " = ",
               2 * d.mqar_pairs + 2 * d.mqar_queries + 1 + extra);
  } else if (d.source == "selective_copy") {
    LCTX_CHECK(m.vocab_size >= 4, "config: data.source = selective_copy needs model.vocab_size >= 4");
    LCTX_CHECK(len >= 3 * d.copy_tokens + 2 + extra, "config: ", len_key, " (", len,
               ") is too short for data.selective_copy.tokens = ", d.copy_tokens, " (need >= ",
               3 * d.copy_tokens + 2 + extra, ")");
  } else {
    LCTX_CHECK(!d.path.empty(), "config: data.source = ", d.source, " needs data.path (a file)");
    if (d.source == "text")
      LCTX_CHECK(m.vocab_size >= 256, "config: data.source = text is byte-level and needs model.vocab_size >= 256 (got ",
                 m.vocab_size, ")");
  }

  // Optimizer, device.
  LCTX_CHECK(c.optimizer.min_lr <= c.optimizer.lr, "config: optimizer.min_lr (", c.optimizer.min_lr,
             ") must be <= optimizer.lr (", c.optimizer.lr, ")");
  LCTX_CHECK(c.optimizer.decay_steps == 0 || c.optimizer.decay_steps > c.optimizer.warmup_steps,
             "config: optimizer.decay_steps (", c.optimizer.decay_steps, ") must be 0 (= train.steps) or above ",
             "optimizer.warmup_steps (", c.optimizer.warmup_steps, ")");
  LCTX_CHECK(!(m.dtype == "bf16" && c.train.device == "cpu"),
             "config: model.dtype = bf16 needs a GPU (train.device cuda or auto); the CPU computes in f32");
  LCTX_CHECK(!(p.backend == "nccl" && c.train.device == "cpu"), "config: parallel.backend = nccl needs train.device cuda or auto");
  LCTX_CHECK(!c.checkpoint.resume.empty(), "config: checkpoint.resume must be none, auto or a file path");
  if (c.train.device == "cuda") validate_for_gpu(c);

  // eval.seq_len: the same model on sequences of another length; every rule on data.seq_len
  // (layout, the task's length, each kind's blocks and windows) must hold for it too.
  if (c.eval.seq_len > 0 && c.eval.seq_len != d.seq_len) {
    for (const MixerKind* k : used)
      LCTX_CHECK(!k->fixed_length, "config: eval.seq_len (", c.eval.seq_len, ") differs from data.seq_len (", d.seq_len,
                 "), but mixer kind ", k->name, " (model.mixers) has parameters shaped by data.seq_len; set ",
                 "eval.seq_len: 0");
    try {
      validate(eval_length_config(c));
    } catch (const Error& e) {
      LCTX_FAIL("config: eval.seq_len = ", c.eval.seq_len, " (the eval sequences' length) fails a rule on data.seq_len: ",
                e.what());
    }
  }
}

Config eval_length_config(const Config& c) {
  Config e = c;
  if (c.eval.seq_len > 0) e.data.seq_len = c.eval.seq_len;
  e.eval.seq_len = 0;
  return e;
}

void validate_for_gpu(const Config& c) {
  const ModelConfig& m = c.model;
  LCTX_CHECK(m.dtype != "f32", "config: model.dtype = f32 is CPU-only; on a GPU use bf16 (or auto), ",
             "master weights stay f32");
  bool attention = false;
  for (const std::string& kind : m.mixers) attention = attention || mixer_kind(kind).attention_heads;
  LCTX_CHECK(!attention || m.head_size() == 64 || m.head_size() == 128,
             "config: on a GPU the head dim (model.head_dim, or model.dim / ", "model.n_heads = ", m.dim, " / ",
             m.n_heads, ") is ", m.head_size(), " but must be 64 or 128 (the CUDA attention kernels' head dims)");
}

void validate_world(const Config& c, int64_t world_size) {
  LCTX_CHECK(world_size == c.parallel.world(), "config: the job has ", world_size,
             " ranks but parallel.dp * parallel.sp = ", c.parallel.dp, " * ", c.parallel.sp, " = ", c.parallel.world(),
             " (expected ", world_size, " = dp * sp; to run ", c.parallel.world(),
             " ranks in one process set parallel.simulate: ", c.parallel.world(), ", or start them with mpirun)");
}

}  // namespace lctx::train
