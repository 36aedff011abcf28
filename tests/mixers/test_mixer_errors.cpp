// The linear-time and Mamba kinds under bad configs (each error names the key and what was expected), and
// the Performer's redraw schedule as a function of the step (what makes resume exact).
#include <gtest/gtest.h>

#include <mutex>
#include <tuple>

#include "dist/dist_test.h"
#include "mixers/conformance.h"
#include "mixers/linformer.h"
#include "mixers/local_global.h"
#include "mixers/memory.h"
#include "mixers/nsa.h"

using namespace lctx;
using namespace lctx::test;

namespace {

void expect_config_error(const std::vector<std::string>& overrides, const std::vector<std::string>& needles) {
  try {
    train::parse_config("", overrides);
    ADD_FAILURE() << "accepted: " << overrides.back();
  } catch (const Error& e) {
    for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(MixerErrors, CausalLinformerNamesTheKey) {
  expect_config_error({"model.mixers=linformer"}, {"mixer.linformer.bidirectional", "causal"});
  expect_config_error({"model.mixers=[softmax, linformer]"}, {"mixer.linformer.bidirectional"});
  EXPECT_NO_THROW(train::parse_config("", {"model.mixers=linformer", "mixer.linformer.bidirectional=true"}));
}

TEST(MixerErrors, PackedDocumentsRefusedByRecurrentKinds) {
  for (const char* kind : {"linear", "performer", "linformer", "mamba", "mamba2"})
    expect_config_error({std::string("model.mixers=") + kind, "mixer.linformer.bidirectional=true",
                         "data.documents=fixed", "data.document_len=64"},
                        {"data.documents", kind});
}

TEST(MixerErrors, LinearOptions) {
  expect_config_error({"model.mixers=linear", "mixer.linear.feature_map=softplus"}, {"mixer.linear.feature_map", "elu"});
  expect_config_error({"model.mixers=linear", "mixer.linear.decay=sometimes"}, {"mixer.linear.decay"});
  expect_config_error({"model.mixers=linear", "mixer.linear.feature_map=identity"},
                      {"mixer.linear.normalize", "identity"});
  expect_config_error({"model.mixers=linear", "model.position=alibi"}, {"model.position", "linear"});
  expect_config_error({"model.mixers=linear", "mixer.linear.short_conv=1"}, {"mixer.linear.short_conv = 1", "2..8"});
  expect_config_error({"model.mixers=performer", "mixer.performer.short_conv=9"}, {"mixer.performer.short_conv"});
}

TEST(MixerErrors, MambaOptions) {
  expect_config_error({"model.mixers=mamba", "mixer.mamba.d_conv=1"}, {"mixer.mamba.d_conv"});
  expect_config_error({"model.mixers=mamba", "mixer.mamba.d_state=300"}, {"mixer.mamba.d_state"});
  expect_config_error({"model.mixers=mamba2", "model.dim=16", "mixer.mamba2.head_dim=12"},
                      {"mixer.mamba2.head_dim", "d_inner = mixer.mamba2.expand x model.dim = 32"});
  expect_config_error({"model.mixers=mamba2", "model.dim=16", "mixer.mamba2.head_dim=8", "mixer.mamba2.groups=3"},
                      {"mixer.mamba2.groups", "heads"});
}

TEST(MixerErrors, LinformerSequenceAboveN) {
  dist::run_simulated(1, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, 64, 1, 1);
    mixers::LinformerMixerOptions o;
    o.core.shape = {16, 4, 2, 4};
    o.rows = 8;
    o.max_len = 32;
    try {
      mixers::make_linformer_mixer(o, mesh, layout);
      ADD_FAILURE() << "a 64-token layout with n = 32 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("n = 32"), std::string::npos) << e.what();
    }
  });
}

// y of a performer mixer after begin_step(step), on one rank.
std::vector<double> performer_y(const std::vector<int64_t>& steps) {
  const KindCase c{"performer", "performer", {"mixer.performer.features=16", "mixer.performer.redraw_every=3"}};
  const MixerShape s;
  const train::Config cfg = case_config(c, s, 1, 1, "zigzag");
  std::vector<double> y;
  dist::run_simulated(1, [&](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, s.seq, 1, 1);
    auto b = build(cfg, mesh, layout, Device::cpu(), DType::f64, DType::f64);
    for (int64_t st : steps) b->mixer->begin_step(st);
    mixers::Tokens in = rank_tokens(cfg, layout, 0, s.batch, Device::cpu());
    in.x = random_tokens(s, 1);
    std::unique_ptr<mixers::Saved> saved;
    y = b->mixer->forward(in, saved, mixers::Pass::train).to_vector();
  });
  return y;
}

// The random features depend on the step only through step / redraw_every: a run resumed at
// step 5 (begin_step(5) on a fresh mixer) computes what the uninterrupted run does at step 5.
TEST(Performer, RedrawIsAFunctionOfTheStep) {
  const std::vector<double> resumed = performer_y({5}), straight = performer_y({0, 1, 2, 3, 4, 5});
  EXPECT_EQ(resumed, straight);
  EXPECT_EQ(performer_y({3}), resumed);   // same draw (3 / 3 == 5 / 3)
  EXPECT_NE(performer_y({2}), resumed);   // the draw before
  EXPECT_NE(performer_y({6}), resumed);   // the next draw
}

TEST(MixerErrors, StridedOptions) {
  expect_config_error({"model.mixers=strided", "data.seq_len=64", "mixer.strided.window=65"},
                      {"mixer.strided.window (65)", "data.seq_len = 64"});  // window larger than the sequence
  expect_config_error({"model.mixers=strided", "mixer.strided.stride=0"}, {"mixer.strided.stride", "got '0'"});
  expect_config_error({"model.mixers=strided", "mixer.strided.window=-3"}, {"mixer.strided.window"});
  expect_config_error({"model.mixers=strided", "mixer.strided.stride=-1"}, {"mixer.strided.stride"});
  expect_config_error({"model.mixers=[softmax, strided]", "model.position=alibi"}, {"model.position", "strided"});
  expect_config_error({"model.mixers=strided", "data.documents=fixed", "data.document_len=64"},
                      {"data.documents", "strided"});
  EXPECT_NO_THROW(train::parse_config("", {"model.mixers=strided", "data.seq_len=96", "parallel.sp=8",
                                           "mixer.strided.window=7", "mixer.strided.stride=5"}));
}

TEST(MixerErrors, LocalGlobalOptions) {
  const std::string k = "model.mixers=local_global";
  expect_config_error({k, "data.seq_len=64", "mixer.local_global.window=65"},
                      {"mixer.local_global.window (65)", "data.seq_len = 64"});  // window larger than the sequence
  expect_config_error({k, "data.seq_len=64", "mixer.local_global.window=8", "mixer.local_global.global_tokens=65"},
                      {"mixer.local_global.global_tokens (65)", "data.seq_len = 64"});
  expect_config_error({k, "data.seq_len=64", "mixer.local_global.window=8", "mixer.local_global.first_tokens=70"},
                      {"mixer.local_global.first_tokens (70)", "data.seq_len = 64"});
  expect_config_error({k, "mixer.local_global.causal=false", "mixer.local_global.first_tokens=3"},
                      {"mixer.local_global.first_tokens", "mixer.local_global.causal"});
  expect_config_error({k, "mixer.local_global.window=0"}, {"mixer.local_global.window"});
  expect_config_error({k, "mixer.local_global.global_tokens=-1"}, {"mixer.local_global.global_tokens"});
  expect_config_error({k, "parallel.sp=2", "parallel.ulysses=2"}, {"parallel.ulysses", "local_global"});
  expect_config_error({"model.mixers=[softmax, local_global]", "model.position=alibi"}, {"model.position", "local_global"});
  expect_config_error({k, "data.documents=fixed", "data.document_len=64"}, {"data.documents", "local_global"});
  EXPECT_NO_THROW(train::parse_config("", {k}));  // the defaults fit the default sequence
  EXPECT_NO_THROW(train::parse_config("", {k, "data.seq_len=96", "parallel.sp=8", "mixer.local_global.window=7",
                                           "mixer.local_global.first_tokens=9"}));
  // Built directly (tests and benchmarks skip the config): the same limits, named.
  dist::run_simulated(1, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, 32, 1, 1);
    mixers::LocalGlobalOptions o;
    o.core.shape = {16, 4, 2, 4};
    for (const auto& [window, globals, first, needle] :
         {std::tuple{33, 0, 0, "window 33 must be in [1, 32]"}, std::tuple{8, 40, 0, "40 global tokens"},
          std::tuple{8, 0, 33, "first_tokens 33"}}) {
      o.window = window;
      o.global_tokens = globals;
      o.first_tokens = first;
      try {
        mixers::make_local_global_mixer(o, mesh, layout);
        ADD_FAILURE() << "accepted: " << needle;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    }
  });
}

TEST(MixerErrors, MemoryOptions) {
  const std::string k = "model.mixers=memory";
  expect_config_error({k, "data.seq_len=64", "mixer.memory.window=65"},
                      {"mixer.memory.window (65)", "data.seq_len = 64"});  // window larger than the sequence
  expect_config_error({k, "data.seq_len=64", "mixer.memory.window=8", "mixer.memory.block=80"},
                      {"mixer.memory.block (80)", "data.seq_len = 64"});
  expect_config_error({k, "mixer.memory.fusion_ratio=1.5"}, {"mixer.memory.fusion_ratio"});
  expect_config_error({k, "mixer.memory.fusion_ratio=-0.1"}, {"mixer.memory.fusion_ratio"});
  expect_config_error({k, "mixer.memory.fusion=mean"}, {"mixer.memory.fusion", "gate"});
  expect_config_error({k, "mixer.memory.window=0"}, {"mixer.memory.window"});
  expect_config_error({k, "mixer.memory.block=0"}, {"mixer.memory.block"});
  expect_config_error({k, "mixer.memory.memory_tokens=-1"}, {"mixer.memory.memory_tokens"});
  expect_config_error({k, "parallel.sp=2", "parallel.ulysses=2"}, {"parallel.ulysses", "memory"});
  expect_config_error({"model.mixers=[softmax, memory]", "model.position=alibi"}, {"model.position", "memory"});
  expect_config_error({k, "data.documents=fixed", "data.document_len=64"}, {"data.documents", "memory"});
  EXPECT_NO_THROW(train::parse_config("", {k}));  // the defaults fit the default sequence
  // Blocks need not fit the layout's segments (zigzag on 8 ranks: segments of 6 tokens, blocks
  // of 8): each rank pools the rows it holds and one all-reduce sums them.
  EXPECT_NO_THROW(train::parse_config("", {k, "data.seq_len=96", "parallel.sp=8", "mixer.memory.window=7",
                                           "mixer.memory.block=8"}));
  // Built directly (tests and benchmarks skip the config): the same limits, named.
  dist::run_simulated(1, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, 32, 1, 1);
    mixers::MemoryOptions o;
    o.core.shape = {16, 4, 2, 4};
    for (const auto& [window, block, ratio, needle] :
         {std::tuple{33, 4, 0.5, "window 33 must be in [1, 32]"}, std::tuple{8, 33, 0.5, "block 33 must be in [1, 32]"},
          std::tuple{8, 0, 0.5, "block 0 must be in [1, 32]"}, std::tuple{8, 4, 1.25, "fusion_ratio 1.25"}}) {
      o.window = window;
      o.block = block;
      o.fusion_ratio = ratio;
      try {
        mixers::make_memory_mixer(o, mesh, layout);
        ADD_FAILURE() << "accepted: " << needle;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    }
  });
}

TEST(MixerErrors, LocalGlobalRandomBlocks) {
  const std::string k = "model.mixers=local_global";
  const std::string r = "mixer.local_global.random_blocks=2";
  expect_config_error({k, "mixer.local_global.random_blocks=-1"}, {"mixer.local_global.random_blocks"});
  expect_config_error({k, r, "mixer.local_global.random_block_size=0"}, {"mixer.local_global.random_block_size"});
  expect_config_error({k, r, "data.seq_len=64", "mixer.local_global.window=8",
                       "mixer.local_global.random_block_size=65"},
                      {"mixer.local_global.random_block_size (65)", "data.seq_len = 64"});
  // 96 tokens zigzag over 4 ranks: segments of 12, which 8 does not divide; contiguous (24) it does.
  expect_config_error({k, r, "data.seq_len=96", "parallel.sp=4", "mixer.local_global.window=8",
                       "mixer.local_global.random_block_size=8", "parallel.layout=zigzag"},
                      {"mixer.local_global.random_block_size (8)", "segment", "12"});
  EXPECT_NO_THROW(train::parse_config("", {k, r, "data.seq_len=96", "parallel.sp=4", "mixer.local_global.window=8",
                                           "mixer.local_global.random_block_size=8", "parallel.layout=contiguous"}));
  EXPECT_NO_THROW(train::parse_config("", {k, "data.seq_len=96", "parallel.sp=4", "mixer.local_global.window=8",
                                           "mixer.local_global.random_block_size=7"}));  // no random blocks: unused
  // Built directly: the same rule, named.
  dist::run_simulated(1, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {});
    const dist::Layout layout(dist::LayoutKind::zigzag, 32, 1, 1);
    mixers::LocalGlobalOptions o;
    o.core.shape = {16, 4, 2, 4};
    o.window = 4;
    o.random_blocks = 1;
    o.random_block_size = 5;
    try {
      mixers::make_local_global_mixer(o, mesh, layout);
      ADD_FAILURE() << "accepted random_block_size 5 for 32 tokens";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mixer.local_global.random_block_size 5"), std::string::npos) << e.what();
    }
  });
}

TEST(MixerErrors, NsaOptions) {
  const std::string k = "model.mixers=nsa";
  EXPECT_NO_THROW(train::parse_config("", {k}));  // the defaults fit the default sequence (256)
  expect_config_error({k, "data.seq_len=64", "mixer.nsa.window=65", "mixer.nsa.select_block=16"},
                      {"mixer.nsa.window (65)", "data.seq_len = 64"});
  expect_config_error({k, "data.seq_len=64", "mixer.nsa.window=8", "mixer.nsa.compress_block=80",
                       "mixer.nsa.select_block=16"},
                      {"mixer.nsa.compress_block (80)", "data.seq_len = 64"});
  // select_block must divide the segments: 96 tokens on 8 ranks, zigzag: segments of 6.
  expect_config_error({k, "data.seq_len=96", "parallel.sp=8", "mixer.nsa.select_block=4", "mixer.nsa.top_n=2",
                       "mixer.nsa.window=8", "mixer.nsa.compress_block=8"},
                      {"mixer.nsa.select_block (4)", "segments of 6 tokens", "zigzag"});
  EXPECT_NO_THROW(train::parse_config("", {k, "data.seq_len=96", "parallel.sp=8", "parallel.layout=contiguous",
                                           "mixer.nsa.select_block=4", "mixer.nsa.top_n=2", "mixer.nsa.window=8",
                                           "mixer.nsa.compress_block=8"}));  // contiguous: segments of 12
  expect_config_error({k, "mixer.nsa.top_n=5"}, {"mixer.nsa.top_n (5)", "number of selection blocks", "= 4"});
  expect_config_error({k, "mixer.nsa.top_n=1"}, {"mixer.nsa.top_n"});
  expect_config_error({k, "mixer.nsa.compress=max"}, {"mixer.nsa.compress", "mean, mlp"});
  // compress: mlp: compress_block must divide the segments too (96 tokens, 8 ranks zigzag: 6).
  expect_config_error({k, "data.seq_len=96", "parallel.sp=8", "mixer.nsa.select_block=3", "mixer.nsa.top_n=2",
                       "mixer.nsa.window=8", "mixer.nsa.compress_block=4", "mixer.nsa.compress=mlp"},
                      {"mixer.nsa.compress_block (4)", "mixer.nsa.compress = mlp", "segments of 6 tokens"});
  expect_config_error({k, "mixer.nsa.compress=mlp", "mixer.nsa.compress_hidden=0"}, {"mixer.nsa.compress_hidden"});
  expect_config_error({k, "mixer.nsa.select_block=0"}, {"mixer.nsa.select_block"});
  expect_config_error({k, "mixer.nsa.compress_block=0"}, {"mixer.nsa.compress_block"});
  expect_config_error({k, "parallel.sp=2", "parallel.ulysses=2"}, {"parallel.ulysses", "nsa"});
  expect_config_error({"model.mixers=[softmax, nsa]", "model.position=alibi"}, {"model.position", "nsa"});
  expect_config_error({k, "data.documents=fixed", "data.document_len=64"}, {"data.documents", "nsa"});
  EXPECT_NO_THROW(train::parse_config("", {k, "train.device=cuda", "model.n_heads=1"}));  // MixerKind::cuda
  EXPECT_NO_THROW(train::parse_config("", {k, "train.device=cuda", "model.n_heads=1", "mixer.nsa.compress=mlp"}));
  // Built directly (tests and benchmarks skip the config): the same limits, named.
  dist::run_simulated(2, [](dist::Comm& comm) {
    dist::Mesh mesh(comm, {.ring = 2});
    const dist::Layout layout(dist::LayoutKind::zigzag, 32, 2, 1);  // segments of 8
    for (const auto& [window, cb, sb, n, needle] :
         {std::tuple{33, 4, 4, 2, "window 33 must be in [1, 32]"}, std::tuple{8, 33, 4, 2, "compress_block 33"},
          std::tuple{8, 4, 3, 2, "select_block 3 must divide the layout's segments"},
          std::tuple{8, 4, 16, 2, "select_block 16 must divide"}, std::tuple{8, 4, 4, 9, "top_n 9 must be in [2, 8]"},
          std::tuple{8, 4, 4, 1, "top_n 1 must be in [2, 8]"}}) {
      mixers::NsaOptions o;
      o.core.shape = {16, 4, 2, 4};
      o.window = window;
      o.compress_block = cb;
      o.select_block = sb;
      o.top_n = n;
      try {
        mixers::make_nsa_mixer(o, mesh, layout);
        ADD_FAILURE() << "accepted: " << needle;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    }
  });
}

}  // namespace
