// The parallel topology a config asks for: the mesh shape (parallel.dp, parallel.sp,
// parallel.ulysses) and the token layout (parallel.layout over data.seq_len). The trainer and
// the tests that build models by hand take both from here.
#pragma once
#include "dist/layout.h"
#include "dist/mesh.h"
#include "trainers/config.h"

namespace lctx::train {

dist::MeshShape mesh_shape(const Config& cfg);
dist::Layout config_layout(const Config& cfg);

}  // namespace lctx::train
