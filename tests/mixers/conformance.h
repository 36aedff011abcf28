// The conformance suite's machinery: every mixer kind in the registry (trainers/mixer_registry.h)
// with each of its test variants is built from a tiny config, given parameters from a
// ParamTable, and run forward and backward on this rank's shard of one fixed batch. The
// results are gathered back to whole-sequence tensors so that runs on any number of ranks, any
// layout and any device can be compared with each other and with finite differences.
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "dist/layout.h"
#include "dist/mesh.h"
#include "mixers/param_table.h"
#include "trainers/config.h"
#include "trainers/mixer_registry.h"
#include "trainers/packing.h"

namespace lctx::test {

// One kind with one set of option overrides.
struct KindCase {
  std::string name;  // "softmax", "softmax_1", ...: a gtest-safe name
  std::string kind;
  std::vector<std::string> overrides;
};

// Packed documents, which every kind also runs with: rows of documents of kDocumentLen tokens
// whose positions restart at each document (trainers/packing.h).
constexpr int64_t kDocumentLen = 12;
inline std::vector<std::string> packed_overrides() {
  return {"data.documents=fixed", "data.document_len=" + std::to_string(kDocumentLen), "data.reset_positions=true"};
}

// Each kind with its defaults, each of its test variants, and packed documents ("<kind>_packed")
// for the kinds that keep tokens to their documents (MixerKind::documents; the others refuse
// data.documents, tested in test_mixer_errors.cpp), each after the kind's test_base.
inline std::vector<KindCase> kind_cases() {
  std::vector<KindCase> v;
  for (const train::MixerKind& k : train::mixer_kinds()) {
    const auto with_base = [&k](const std::vector<std::string>& o) {
      std::vector<std::string> all = k.test_base;
      all.insert(all.end(), o.begin(), o.end());
      return all;
    };
    v.push_back({k.name, k.name, with_base({})});
    for (size_t i = 0; i < k.test_variants.size(); ++i)
      v.push_back({k.name + "_" + std::to_string(i + 1), k.name, with_base(k.test_variants[i])});
    if (k.documents) v.push_back({k.name + "_packed", k.name, with_base(packed_overrides())});
  }
  return v;
}

struct MixerShape {
  int64_t batch = 2, seq = 48, dim = 16, heads = 4, kv_heads = 2, head_dim = 0;
};

// The config of a one-layer model of `c.kind` on n ranks (u of them Ulysses) with `layout`;
// throws (lctx::Error) when the kind does not allow that combination.
inline train::Config case_config(const KindCase& c, const MixerShape& s, int n, int u, const std::string& layout,
                                 const std::string& device = "cpu") {
  std::vector<std::string> o = {"model.mixers=" + c.kind,
                                "model.n_layers=1",
                                "model.dim=" + std::to_string(s.dim),
                                "model.n_heads=" + std::to_string(s.heads),
                                "model.n_kv_heads=" + std::to_string(s.kv_heads),
                                "model.head_dim=" + std::to_string(s.head_dim),
                                "data.seq_len=" + std::to_string(s.seq),
                                "parallel.sp=" + std::to_string(n),
                                "parallel.ulysses=" + std::to_string(u),
                                "parallel.layout=" + layout,
                                "train.device=" + device};
  o.insert(o.end(), c.overrides.begin(), c.overrides.end());
  return train::parse_config("", o);
}

// A mixer with its own parameters.
struct Built {
  std::unique_ptr<mixers::Mixer> mixer;
  mixers::ParamTable table;
};

inline std::unique_ptr<Built> build(const train::Config& c, dist::Mesh& mesh, const dist::Layout& layout, Device dev,
                                    DType master, DType compute) {
  auto b = std::make_unique<Built>();
  b->mixer = train::mixer_kind(c.model.mixer_of(0)).make(c, mesh, layout);
  const std::vector<mixers::ParamSpec> specs = b->mixer->param_specs();
  b->table.add("", specs);
  b->table.allocate(dev, master, compute);
  // A wide init so that attention weights are far from uniform.
  b->table.init({.seed = 11, .init_std = 0.4, .n_layers = 1});
  b->mixer->bind(b->table.range(0, specs.size()));
  return b;
}

// Results of one forward + backward: y and dx of this rank's tokens, and the flat parameter
// gradients of this rank (before any sum over ranks).
struct Out {
  Tensor y, dx, grads;
};

enum class Recompute { no, yes };

// Forward (Pass::train, or Pass::checkpoint then Pass::recompute) and backward with dy, on x
// with the positions and documents of `seq`.
inline Out run_mixer(Built& b, const Tensor& x, const mixers::Tokens& seq, const Tensor& dy,
                     Recompute rc = Recompute::no) {
  std::unique_ptr<mixers::Saved> saved;
  mixers::Tokens in = seq;
  in.x = x;
  Out o;
  if (rc == Recompute::no) {
    o.y = b.mixer->forward(in, saved, mixers::Pass::train).clone();  // the backward may reuse y's memory
  } else {
    const Tensor y1 = b.mixer->forward(in, saved, mixers::Pass::checkpoint).clone();
    o.y = b.mixer->forward(in, saved, mixers::Pass::recompute).clone();
    EXPECT_EQ(y1.to_vector(), o.y.to_vector()) << "Pass::recompute changed y";
  }
  o.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  b.mixer->backward(o.dx, dy, in, *saved);
  o.grads = b.table.flat_grads().clone();
  return o;
}

// Random f64 [B, S, D] on the CPU.
inline Tensor random_tokens(const MixerShape& s, uint64_t seed) {
  Tensor t = Tensor::empty({s.batch, s.seq, s.dim}, DType::f64);
  rng_normal(t, seed, 0);
  return t;
}

inline dist::LayoutKind layout_kind(const std::string& name) {
  return name == "contiguous" ? dist::LayoutKind::contiguous : dist::LayoutKind::zigzag;
}

// The positions and documents of sp rank r's tokens (x undefined) on `device`: global
// positions, or with data.documents = fixed every row packed with documents of
// data.document_len tokens, sharded as lctx-train's batches are (train::shard_documents).
inline mixers::Tokens rank_tokens(const train::Config& cfg, const dist::Layout& layout, int r, int64_t batch,
                                  Device device) {
  mixers::Tokens t;
  t.positions = layout.positions_tensor(r, DType::i32);
  if (train::document_mode(cfg.data) == train::DocumentMode::fixed) {
    const int64_t S = cfg.data.seq_len;
    std::vector<int64_t> starts;
    train::fixed_starts(S, cfg.data.document_len, starts);
    t.documents = std::make_shared<const attn::Documents>(
        S, std::vector<std::vector<int64_t>>(static_cast<size_t>(batch), train::row_starts(starts, S)));
    const train::TokenDocuments d = train::shard_documents(*t.documents, layout.positions(r), train::position_mode(cfg.data));
    t.doc_ids = d.doc_ids.to(device);
    if (d.positions.defined()) t.positions = d.positions;
  }
  t.positions = t.positions.to(device);
  return t;
}

// One forward + backward of `cfg`'s mixer on the calling rank of `comm` (sp = comm.size()),
// from whole-sequence x / dy; returns the whole-sequence y and dx (gathered over the ranks)
// and the parameter gradients summed over the ranks, on the CPU in f64. `params` (f64, whole
// table) replaces the initial parameters when defined; local (optional) receives the rank's
// own results.
struct SpRun {
  Device device = Device::cpu();
  DType master = DType::f64, compute = DType::f64;
  Recompute recompute = Recompute::no;
  Tensor params;
};

inline Out run_sequence_parallel(const train::Config& cfg, dist::Comm& comm, const Tensor& x_full, const Tensor& dy_full,
                                 const SpRun& run = {}, Out* local = nullptr) {
  dist::MeshShape shape;
  shape.ulysses = static_cast<int>(cfg.parallel.ulysses);
  shape.ring = static_cast<int>(cfg.parallel.sp / cfg.parallel.ulysses);
  dist::Mesh mesh(comm, shape);
  const dist::Layout layout(layout_kind(train::resolved_layout(cfg)), cfg.data.seq_len, shape.ring, shape.ulysses);
  const int r = mesh.coords().sp;
  auto b = build(cfg, mesh, layout, run.device, run.master, run.compute);
  if (run.params.defined()) {
    b->table.flat_params().copy_from(run.params);
    b->table.sync_compute();
  }
  const Tensor x = layout.shard(x_full, r).to(run.compute).to(run.device);
  const Tensor dy = layout.shard(dy_full, r).to(run.compute).to(run.device);
  Out o = run_mixer(*b, x, rank_tokens(cfg, layout, r, x.size(0), run.device), dy, run.recompute);
  if (local) *local = {o.y.to(Device::cpu()), o.dx.to(Device::cpu()), o.grads.to(Device::cpu())};
  Out full;
  full.y = layout.unshard(mesh.sp(), o.y).to(Device::cpu()).to(DType::f64);
  full.dx = layout.unshard(mesh.sp(), o.dx).to(Device::cpu()).to(DType::f64);
  comm.all_reduce(o.grads, dist::ReduceOp::sum);
  full.grads = o.grads.to(Device::cpu()).to(DType::f64);
  return full;
}

}  // namespace lctx::test
