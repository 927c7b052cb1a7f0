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

  // Whether every linear index fits a 32-bit key (with one value left for "empty").
  bool narrow_keys() const {
    return static_cast<double>(grid[0]) * grid[1] * grid[2] < 4294967295.0;
  }

  // Validates and computes `grid`; returns an error message, empty if fine.
  std::string init(const float voxel_size_xyz[3], const float range_xyzxyz[6]);
};

// Maps a voxel's linear index to its number among one call's voxels. Open addressing
// with Fibonacci hashing; entries are 8 bytes with 32-bit keys (grids of < 2^32 cells,
// which is every common configuration), so the table stays in cache while the points
// stream past it. Only the slots a call used are cleared before the next call.
template <typename Key>
class VoxelTable {
 public:
  static constexpr Key kEmpty = static_cast<Key>(-1);

  void prepare(std::size_t max_entries) {
    std::size_t capacity = 16;
    while (capacity < 2 * max_entries) capacity *= 2;
    if (capacity != entries_.size()) {
      entries_.assign(capacity, Entry{kEmpty, -1});
      shift_ = 64 - __builtin_ctzll(static_cast<unsigned long long>(capacity));
    } else {
      for (std::size_t i : used_) entries_[i].key = kEmpty;
    }
    used_.clear();
    mask_ = capacity - 1;
  }

  // The number stored for `key`. If absent: stores `value_if_absent` and returns it when
  // that is >= 0 (setting `inserted`), else returns -1.
  std::int32_t find_or_insert(Key key, std::int32_t value_if_absent, bool& inserted) {
    std::size_t i = static_cast<std::size_t>((static_cast<std::uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift_);
    for (;; i = (i + 1) & mask_) {
      Entry& e = entries_[i];
      if (e.key == key) return e.value;
      if (e.key == kEmpty) break;
    }
    if (value_if_absent < 0) return -1;
    entries_[i] = Entry{key, value_if_absent};
    used_.push_back(i);
    inserted = true;
    return value_if_absent;
  }

 private:
  struct Entry {
    Key key;
    std::int32_t value;
  };
  std::vector<Entry> entries_;
  std::vector<std::size_t> used_;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

// Both key widths; a call uses the narrow one when the grid allows.
struct VoxelTables {
  VoxelTable<std::uint32_t> narrow;
  VoxelTable<std::uint64_t> wide;
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
                         int max_points, int max_voxels, VoxelTables& tables, PointAssignment& out,
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
                              VoxelTables& tables, std::int32_t* point_coords, std::int64_t* point_voxel,
                              std::vector<std::int32_t>& voxel_coords);

}  // namespace fastload
