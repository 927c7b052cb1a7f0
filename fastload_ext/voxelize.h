// Hard and dynamic voxelization of point clouds, with the semantics of spconv 2.x
// PointToVoxel / mmcv Voxelization on CPU (see voxelize.cpp for the rules). Plain C++
// over raw buffers: no Python here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastload {

struct VoxelGridSpec {
  float voxel_size[3];  // x, y, z
  float range_min[3];   // x, y, z
  float range_max[3];
  int grid[3];          // x, y, z: round((max - min) / size) in float32
  // Points at or beyond these coordinates are certainly out of the grid (verified with the
  // exact arithmetic, see init), per points' dtype: they are rejected without a division.
  float reject_at_f[3];
  double reject_at_d[3];

  // Validates and computes `grid`; returns an error message, empty if fine.
  std::string init(const float voxel_size_xyz[3], const float range_xyzxyz[6]);
};

// Maps a voxel's linear index to its number among this call's voxels. Open addressing;
// entries carry the call's generation, so starting a new call clears nothing.
class VoxelTable {
 public:
  void prepare(std::size_t max_entries);
  // The voxel number of `key`, or -1 if absent.
  std::int32_t find(std::int64_t key) const;
  // Inserts `key` -> `value` (the key must be absent).
  void insert(std::int64_t key, std::int32_t value);

 private:
  struct Entry {
    std::int64_t key;
    std::int32_t value;
    std::uint32_t generation;
  };
  std::vector<Entry> entries_;
  std::size_t mask_ = 0;
  int shift_ = 64;
  std::uint32_t generation_ = 0;
  std::size_t slot(std::int64_t key) const;
};

// Per-point results of the assignment pass, and the fill pass's grouping; reused
// between calls.
struct PointAssignment {
  std::vector<std::int32_t> voxel;  // voxel number, or -1 (out of range / refused)
  std::vector<std::int32_t> row;    // row within the voxel, or -1 (voxel full)
  std::vector<std::int32_t> voxel_start;  // fill: first entry of each voxel in `order`
  std::vector<std::int32_t> order;        // fill: kept point indices, grouped by voxel
};

// Pass 1 of hard voxelization: assigns each point its voxel and row; fills the per-voxel
// coordinates (z, y, x) and point counts. Returns the number of voxels.
template <typename T>
std::int32_t assign_hard(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                         int max_points, int max_voxels, VoxelTable& table, PointAssignment& out,
                         std::vector<std::int32_t>& coords_zyx, std::vector<std::int32_t>& counts);

// Pass 2: copies each kept point into `voxels` (M, max_points, C) and zeroes unused rows.
template <typename T>
void fill_hard(const T* points, std::int64_t n, std::int64_t channels, std::int64_t stride,
               PointAssignment& assignment, const std::int32_t* counts, std::int32_t num_voxels,
               int max_points, T* voxels);

// Dynamic voxelization: per-point (z, y, x) coordinates (a -1 row when dropped), the
// voxel number of every point (-1 when dropped) and the unique voxels' coordinates in
// order of first appearance. Returns the number of unique voxels.
template <typename T>
std::int32_t voxelize_dynamic(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                              VoxelTable& table, std::int32_t* point_coords, std::int64_t* point_voxel,
                              std::vector<std::int32_t>& voxel_coords);

}  // namespace fastload
