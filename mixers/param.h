// Parameters as layers declare them and the trainer holds them. A layer (a Mixer, the model's
// scaffold) lists ParamSpecs: a name, a global shape, whether weight decay applies and how the
// values start. A ParamTable turns a list of specs into Params: views into one flat f32 master
// buffer and one flat f32 gradient buffer (the trainer all-reduces and steps them as one), plus
// the compute copy forward/backward read (the master itself in f32, a bf16 copy on GPUs).
// Initialisation is declared, never guessed from a shape or a name, so kinds with special
// starting values (norm weights, Mamba's A_log and dt_bias, memory tokens) get them right.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lctx::mixers {

enum class Init {
  ones,
  zeros,
  normal,           // N(0, init_std)
  normal_residual,  // N(0, init_std / sqrt(2 n_layers)): projections that write the residual stream
  custom,           // ParamSpec::custom fills the master
};

enum class Decay { none, weight };  // AdamW's decoupled weight decay applies (matrices)

// How a draw is made reproducible: element i of the parameter is Philox draw (seed, offset + i),
// the same on every rank and device.
struct InitContext {
  uint64_t seed = 0;
  uint64_t offset = 0;
  double init_std = 0.02;
  int64_t n_layers = 1;
};

struct ParamSpec {
  std::string name;  // local name ("wqkv"); the model prefixes "layers.<l>."
  Shape shape;       // global shape (parameters are replicated on every rank)
  Decay decay = Decay::weight;
  Init init = Init::normal;
  std::function<void(Tensor& master, const InitContext&)> custom = {};  // Init::custom only
};

struct Param {
  std::string name;
  Tensor master;   // f32, a view into the flat parameter buffer
  Tensor grad;     // f32, a view into the flat gradient buffer (overwritten by each backward)
  Tensor compute;  // what forward/backward read: master itself (f32/f64) or a bf16 copy
  Decay decay = Decay::weight;
};

// Fills `master` as `spec` declares.
void init_param(Tensor& master, const ParamSpec& spec, const InitContext& ctx);

// A parameter drawn from U(-bound, bound) (PyTorch's conv default, Mamba's dt_proj).
ParamSpec uniform_spec(std::string name, Shape shape, double bound, Decay decay);

// t in wide_dtype(t): the scans and convolutions take their parameters wide, and a
// parameter's compute copy is bf16 on GPUs; undefined stays undefined.
Tensor wide(const Tensor& t);

}  // namespace lctx::mixers
