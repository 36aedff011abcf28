#include "trainers/topology.h"

namespace lctx::train {

dist::MeshShape mesh_shape(const Config& cfg) {
  const auto& p = cfg.parallel;
  dist::MeshShape shape;
  shape.dp = static_cast<int>(p.dp);
  shape.ulysses = static_cast<int>(p.ulysses);
  shape.ring = static_cast<int>(p.sp / p.ulysses);
  return shape;
}

dist::Layout config_layout(const Config& cfg) {
  const dist::MeshShape shape = mesh_shape(cfg);
  const dist::LayoutKind kind =
      resolved_layout(cfg) == "contiguous" ? dist::LayoutKind::contiguous : dist::LayoutKind::zigzag;
  return dist::Layout(kind, cfg.data.seq_len, shape.ring, shape.ulysses);
}

}  // namespace lctx::train
