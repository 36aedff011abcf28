// Mesh: the world split into data-parallel x sequence-parallel groups, and the sequence group
// into Ulysses (all-to-all over heads) x ring (K/V passed around) groups.
//
// Rank layout (Ulysses innermost, so an all-to-all group sits on neighbouring GPUs / one node,
// and the ring goes across them):
//   world_rank = dp_rank * sp + sp_rank,        sp = ulysses * ring
//   sp_rank    = ring_rank * ulysses + ulysses_rank
// e.g. dp=2, ulysses=2, ring=2 (8 ranks): rank 5 = dp 1, sp 1 = ring 0, ulysses 1.
// Groups: dp (same sp_rank), sp (same dp_rank), ulysses (same dp_rank and ring_rank),
// ring (same dp_rank and ulysses_rank); each is ranked by its own index.
#pragma once
#include <memory>
#include <string>

#include "dist/comm.h"

namespace lctx::dist {

struct MeshShape {
  int dp = 1, ulysses = 1, ring = 1;
  int sp() const { return ulysses * ring; }
  int world() const { return dp * sp(); }
  std::string str() const;  // "dp 2 x ulysses 2 x ring 2"
};

struct MeshCoords {
  int dp = 0, sp = 0, ulysses = 0, ring = 0;
};

class Mesh {
 public:
  // Collective over `world` (it must outlive the Mesh). Throws when the shape does not fit.
  Mesh(Comm& world, MeshShape shape);

  // Throws an lctx::Error naming the mismatch (non-positive degree, world != dp * sp).
  static void validate(int world_size, const MeshShape& shape);
  static MeshCoords coords(int world_rank, const MeshShape& shape);
  static int world_rank(const MeshCoords& c, const MeshShape& shape);

  const MeshShape& shape() const { return shape_; }
  const MeshCoords& coords() const { return coords_; }
  Comm& world() const { return world_; }
  Comm& dp() const { return *dp_; }
  Comm& sp() const { return *sp_; }
  Comm& ulysses() const { return *ulysses_; }
  Comm& ring() const { return *ring_; }

 private:
  Comm& world_;
  MeshShape shape_;
  MeshCoords coords_;
  std::unique_ptr<Comm> dp_, sp_, ulysses_, ring_;
};

}  // namespace lctx::dist
