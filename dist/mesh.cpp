#include "dist/mesh.h"

namespace lctx::dist {

std::string MeshShape::str() const { return detail::cat("dp ", dp, " x ulysses ", ulysses, " x ring ", ring); }

void Mesh::validate(int world_size, const MeshShape& s) {
  LCTX_CHECK(s.dp >= 1 && s.ulysses >= 1 && s.ring >= 1, "Mesh: every degree must be >= 1, got ", s.str());
  LCTX_CHECK(world_size == s.world(), "Mesh: world size ", world_size, " != ", s.str(), " = ", s.world(),
             " ranks (world = dp * ulysses * ring)");
}

MeshCoords Mesh::coords(int world_rank, const MeshShape& s) {
  LCTX_CHECK(world_rank >= 0 && world_rank < s.world(), "Mesh: rank ", world_rank, " outside ", s.str());
  MeshCoords c;
  c.dp = world_rank / s.sp();
  c.sp = world_rank % s.sp();
  c.ring = c.sp / s.ulysses;
  c.ulysses = c.sp % s.ulysses;
  return c;
}

int Mesh::world_rank(const MeshCoords& c, const MeshShape& s) {
  return c.dp * s.sp() + c.ring * s.ulysses + c.ulysses;
}

Mesh::Mesh(Comm& world, MeshShape shape) : world_(world), shape_(shape) {
  validate(world.size(), shape);
  coords_ = coords(world.rank(), shape);
  const MeshCoords& c = coords_;
  dp_ = world.split(c.sp, c.dp);
  sp_ = world.split(c.dp, c.sp);
  ulysses_ = world.split(c.dp * shape.ring + c.ring, c.ulysses);
  ring_ = world.split(c.dp * shape.ulysses + c.ulysses, c.ring);
}

}  // namespace lctx::dist
