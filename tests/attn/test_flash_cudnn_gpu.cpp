// cuDNN's fused attention with ALiBi and with packed documents (FlashOptions::documents: one
// cuDNN ragged sequence per document), and the plain causal calls next to them: forced cuDNN,
// forward and backward, against the CPU reference in f64 on the same rounded inputs. A fixed
// tolerance would be loose for some shapes and flaky for others, so each error is bounded by
// twice a plain-bf16 (f16) baseline: how far the f64 reference moves when its inputs are
// rounded to the GPU dtype once. Then the automatic backend: cuDNN for the calls it supports
// (its forward is bitwise the forced cuDNN one), lctx's kernels where cuDNN cannot run the call
// (a forced cuDNN throws there) or runs it slower (short documents).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "attn/flash.h"
#include "common/check.h"
#include "flash_reference.h"

using namespace lctx;
using namespace lctx::test;
using attn::AttnBackend;

namespace {

struct CudnnCase {
  FlashCase c;
  DType dt = DType::bf16;
};

void PrintTo(const CudnnCase& c, std::ostream* os) { *os << c.c.name; }

// FlashOptions::documents of the case: where its documents start over the global positions
// [0, max(qoff + Sq, koff + Sk)) of each row (the partition its ids index).
void set_documents(FlashInputs& in, const FlashCase& c) {
  const int64_t len = std::max(c.qoff + c.Sq, c.koff + c.Sk);
  std::vector<std::vector<int64_t>> starts(c.B);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t pos = 0; pos < len; ++pos)
      if (pos == 0 || doc_id(c.docs, b, pos) != doc_id(c.docs, b, pos - 1)) starts[b].push_back(pos);
  in.opts.documents = std::make_shared<const attn::Documents>(len, starts);
}

FlashInputs inputs_of(const FlashCase& c, uint64_t seed) {
  FlashInputs in = make_flash_inputs(c, seed);
  if (c.docs != Docs::none) set_documents(in, c);
  return in;
}

std::vector<CudnnCase> cudnn_cases() {
  std::vector<CudnnCase> v;
  auto add = [&](FlashCase c, DType dt = DType::bf16) { v.push_back({c, dt}); };
  add({.name = "causal", .B = 1, .Sq = 1024, .Sk = 1024, .Hq = 4, .Hkv = 4, .D = 128, .causal = true});
  add({.name = "causal_gqa", .B = 2, .Sq = 512, .Sk = 512, .Hq = 8, .Hkv = 2, .D = 64, .causal = true});
  add({.name = "alibi_causal", .B = 1, .Sq = 1024, .Sk = 1024, .Hq = 4, .Hkv = 4, .D = 128, .causal = true,
       .alibi = true});
  add({.name = "alibi_causal_gqa", .B = 2, .Sq = 512, .Sk = 512, .Hq = 8, .Hkv = 2, .D = 64, .causal = true,
       .alibi = true});
  add({.name = "alibi_causal_mqa_odd", .B = 1, .Sq = 777, .Sk = 777, .Hq = 4, .Hkv = 1, .D = 128, .causal = true,
       .alibi = true});
  add({.name = "alibi_causal_f16", .B = 1, .Sq = 640, .Sk = 640, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
       .alibi = true},
      DType::f16);
  add({.name = "alibi_causal_window", .B = 1, .Sq = 1000, .Sk = 1000, .Hq = 4, .Hkv = 2, .D = 64, .causal = true,
       .wl = 150, .alibi = true});
  // Ring blocks: queries after (part of) the keys, global positions q_offset + i, k_offset + j.
  add({.name = "alibi_causal_block_overlap", .B = 1, .Sq = 256, .Sk = 384, .Hq = 4, .Hkv = 2, .D = 128,
       .causal = true, .qoff = 128, .alibi = true});
  add({.name = "alibi_causal_block_past", .B = 1, .Sq = 256, .Sk = 256, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
       .qoff = 512, .koff = 256, .alibi = true});
  // Keys on both sides of the query: the bias is -slope * |d|.
  add({.name = "alibi_full", .B = 1, .Sq = 300, .Sk = 300, .Hq = 4, .Hkv = 2, .D = 128, .alibi = true});
  add({.name = "alibi_full_offsets", .B = 1, .Sq = 300, .Sk = 340, .Hq = 4, .Hkv = 2, .D = 64, .qoff = 27, .koff = 3,
       .alibi = true});
  add({.name = "alibi_window", .B = 1, .Sq = 400, .Sk = 400, .Hq = 2, .Hkv = 1, .D = 128, .wl = 100, .wr = 20,
       .alibi = true});
  // Packed documents (FlashOptions::documents): random lengths 1..300 (sequence counts padded
  // with empty sequences to a power of two), 13-token documents, one document per row.
  add({.name = "docs_causal", .B = 2, .Sq = 700, .Sk = 700, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
       .docs = Docs::random});
  add({.name = "docs_full_mqa", .B = 1, .Sq = 600, .Sk = 600, .Hq = 2, .Hkv = 1, .D = 128, .docs = Docs::random});
  add({.name = "docs_alibi_causal", .B = 1, .Sq = 520, .Sk = 520, .Hq = 4, .Hkv = 4, .D = 64, .causal = true,
       .alibi = true, .docs = Docs::regular});
  add({.name = "docs_window_causal", .B = 2, .Sq = 640, .Sk = 640, .Hq = 4, .Hkv = 2, .D = 64, .causal = true,
       .wl = 50, .docs = Docs::random});
  add({.name = "docs_single", .B = 2, .Sq = 512, .Sk = 512, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
       .docs = Docs::single});
  return v;
}

class FlashCudnn : public testing::TestWithParam<CudnnCase> {};

Tensor rounded(const Tensor& t, DType dt) { return t.to(dt).to(DType::f64); }

attn::FlashOptions on_gpu(attn::FlashOptions o, AttnBackend backend) {
  if (o.alibi_slopes.defined()) o.alibi_slopes = o.alibi_slopes.to(Device::cuda());
  if (o.q_doc_ids.defined()) {
    o.q_doc_ids = o.q_doc_ids.to(Device::cuda());
    o.k_doc_ids = o.k_doc_ids.to(Device::cuda());
  }
  o.backend = backend;
  return o;
}

// rel_error(got, want) <= 2 * rel_error(want, exact).
void expect_within_twice_baseline(const Tensor& got, const Tensor& want, const Tensor& exact, const std::string& what) {
  const double err = rel_error(got, want), baseline = rel_error(want, exact);
  std::printf("[ cudnn   ] %s: error %.3e, baseline %.3e, ratio %.2f\n", what.c_str(), err, baseline, err / baseline);
  EXPECT_LE(err, 2 * baseline) << what;
}

TEST_P(FlashCudnn, ForcedCudnnWithinTwiceBaseline) {
  LCTX_REQUIRE_GPU();
  const auto& [c, dt] = GetParam();
  const FlashInputs in = inputs_of(c, 5);
  const auto exact = attn::flash_forward(in.q, in.k, in.v, in.opts);
  const auto exact_g = attn::flash_backward(in.q, in.k, in.v, exact.o, exact.lse, in.dout, in.opts);
  const Tensor q = rounded(in.q, dt), k = rounded(in.k, dt), v = rounded(in.v, dt), dout = rounded(in.dout, dt);
  const auto want = attn::flash_forward(q, k, v, in.opts);
  const auto want_g = attn::flash_backward(q, k, v, want.o, want.lse, dout, in.opts);

  const attn::FlashOptions go = on_gpu(in.opts, AttnBackend::cudnn);
  const Device gpu = Device::cuda();
  const Tensor qd = q.to(dt).to(gpu), kd = k.to(dt).to(gpu), vd = v.to(dt).to(gpu), dod = dout.to(dt).to(gpu);
  try {
    const auto out = attn::flash_forward(qd, kd, vd, go);
    const auto g = attn::flash_backward(qd, kd, vd, out.o, out.lse, dod, go);
    expect_within_twice_baseline(out.o, want.o, exact.o, c.name + " o");
    expect_within_twice_baseline(out.lse, want.lse, exact.lse, c.name + " lse");
    expect_within_twice_baseline(g.dq, want_g.dq, exact_g.dq, c.name + " dq");
    expect_within_twice_baseline(g.dk, want_g.dk, exact_g.dk, c.name + " dk");
    expect_within_twice_baseline(g.dv, want_g.dv, exact_g.dv, c.name + " dv");
  } catch (const Error& e) {
    ADD_FAILURE() << c.name << ": forced cuDNN failed: " << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, FlashCudnn, testing::ValuesIn(cudnn_cases()),
                         [](const auto& info) { return info.param.c.name; });

struct Result {
  Tensor o, lse;
};

Result forward_on(const FlashInputs& in, AttnBackend backend) {
  const Device gpu = Device::cuda();
  const auto out = attn::flash_forward(in.q.to(DType::bf16).to(gpu), in.k.to(DType::bf16).to(gpu),
                                       in.v.to(DType::bf16).to(gpu), on_gpu(in.opts, backend));
  return {out.o, out.lse};
}

void expect_same(const Result& a, const Result& b, const std::string& what) {
  EXPECT_EQ(max_abs_diff(a.o, b.o), 0) << what << " o";
  EXPECT_EQ(max_abs_diff(a.lse, b.lse), 0) << what << " lse";
}

// (Documents: one per row here; short documents stay on lctx's kernels, see below.)
TEST(FlashCudnnAuto, CausalAlibiAndDocumentsRunOnCudnn) {
  LCTX_REQUIRE_GPU();
  for (const FlashCase& c :
       {FlashCase{.name = "alibi_causal", .B = 1, .Sq = 512, .Sk = 512, .Hq = 4, .Hkv = 4, .D = 128, .causal = true,
                  .alibi = true},
        FlashCase{.name = "alibi_causal_gqa", .B = 2, .Sq = 300, .Sk = 300, .Hq = 8, .Hkv = 2, .D = 64,
                  .causal = true, .alibi = true},
        FlashCase{.name = "docs_single", .B = 2, .Sq = 400, .Sk = 400, .Hq = 4, .Hkv = 2, .D = 128, .causal = true,
                  .docs = Docs::single}}) {
    const FlashInputs in = inputs_of(c, 9);
    const Result automatic = forward_on(in, AttnBackend::automatic), lctx = forward_on(in, AttnBackend::lctx);
    expect_same(automatic, forward_on(in, AttnBackend::cudnn), c.name + ": auto vs cudnn");
    EXPECT_GT(max_abs_diff(automatic.o, lctx.o), 0) << c.name << ": lctx's kernels give bitwise cuDNN's output";
  }
}

TEST(FlashCudnnAuto, FallsBackWhereCudnnCannot) {
  LCTX_REQUIRE_GPU();
  // Documents on a block of the sequence (ring), documents without FlashOptions::documents,
  // causal queries before every key (rows without a visible key).
  struct Case {
    FlashCase c;
    bool documents;
  };
  for (const auto& [c, documents] :
       {Case{{.name = "docs_block", .B = 2, .Sq = 190, .Sk = 230, .Hq = 2, .Hkv = 1, .D = 64, .causal = true,
              .qoff = 40, .docs = Docs::regular},
             true},
        Case{{.name = "docs_ids_only", .B = 2, .Sq = 190, .Sk = 190, .Hq = 2, .Hkv = 1, .D = 64, .causal = true,
              .alibi = true, .docs = Docs::regular},
             false},
        Case{{.name = "alibi_keys_after", .B = 1, .Sq = 100, .Sk = 64, .Hq = 2, .Hkv = 1, .D = 64, .causal = true,
              .koff = 50, .alibi = true},
             false}}) {
    FlashInputs in = make_flash_inputs(c, 13);
    if (documents) set_documents(in, c);
    EXPECT_THROW(forward_on(in, AttnBackend::cudnn), Error) << c.name;
    expect_same(forward_on(in, AttnBackend::automatic), forward_on(in, AttnBackend::lctx), c.name + ": auto vs lctx");
  }
  // Slopes that are a view 4 bytes into their storage: cuDNN wants 16-byte aligned tensors.
  const FlashCase c{.name = "alibi_unaligned", .B = 1, .Sq = 128, .Sk = 128, .Hq = 4, .Hkv = 2, .D = 64,
                    .causal = true, .alibi = true};
  FlashInputs in = make_flash_inputs(c, 17);
  const Tensor padded = Tensor::zeros({c.Hq + 1}, DType::f32);
  padded.slice(0, 1, c.Hq + 1).copy_from(in.opts.alibi_slopes);
  const Tensor gpu_padded = padded.to(Device::cuda());
  const Device gpu = Device::cuda();
  const Tensor q = in.q.to(DType::bf16).to(gpu), k = in.k.to(DType::bf16).to(gpu), v = in.v.to(DType::bf16).to(gpu);
  attn::FlashOptions o = on_gpu(in.opts, AttnBackend::cudnn);
  o.alibi_slopes = gpu_padded.slice(0, 1, c.Hq + 1);
  try {
    attn::flash_forward(q, k, v, o);
    ADD_FAILURE() << "a forced cudnn backend with unaligned ALiBi slopes must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ALiBi slopes not 16-byte aligned"), std::string::npos) << e.what();
  }
  o.backend = AttnBackend::automatic;
  const auto automatic = attn::flash_forward(q, k, v, o);
  o.backend = AttnBackend::lctx;
  const auto lctx = attn::flash_forward(q, k, v, o);
  expect_same({automatic.o, automatic.lse}, {lctx.o, lctx.lse}, "unaligned slopes: auto vs lctx");
}

// Documents averaging fewer than kCudnnMinMeanDocument tokens run faster on lctx's kernels:
// the automatic choice takes them, a forced cuDNN still runs.
TEST(FlashCudnnAuto, ShortDocumentsStayOnLctx) {
  LCTX_REQUIRE_GPU();
  const FlashCase c{.name = "docs_13", .B = 1, .Sq = 520, .Sk = 520, .Hq = 4, .Hkv = 2, .D = 64, .causal = true,
                    .docs = Docs::regular};
  const FlashInputs in = inputs_of(c, 19);
  EXPECT_NO_THROW(forward_on(in, AttnBackend::cudnn));
  expect_same(forward_on(in, AttnBackend::automatic), forward_on(in, AttnBackend::lctx), "13-token documents");
}

}  // namespace
