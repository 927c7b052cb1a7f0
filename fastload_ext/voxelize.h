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
  int bits[3];          // x, y, z: bits that hold a coordinate in [0, grid)

  // A voxel's key: its coordinates packed as bit fields (z | y | x) in 32 bits when they fit
  // in 31 (every common configuration: KITTI and nuScenes grids take 19 to 28), which
  // keeps the table small and the coordinates a shift away; otherwise its linear index
  // z-major in 64 bits. Either way the top values are free for "empty" and "outside".
  bool narrow_keys() const { return bits[0] + bits[1] + bits[2] <= 31; }

  // Validates and computes `grid`; returns an error message, empty if fine.
  std::string init(const float voxel_size_xyz[3], const float range_xyzxyz[6]);
};

// Maps a voxel's key to its number among one call's voxels. Open addressing with
// Fibonacci hashing and linear probing, sized for an eighth full (half for the largest
// max_voxels) so that probes, the lookups of refused voxels included, rarely go past the
// first slot. Entries are 8 bytes with 32-bit keys. Only the slots a call used are
// cleared before the next call: no dense grid, no full reset.
template <typename Key>
class VoxelTable {
 public:
  static constexpr Key kEmpty = static_cast<Key>(-1);
  static constexpr Key kOutside = static_cast<Key>(-2);  // a point outside the grid

  // Readies the table for a call that may open up to `max_voxels` voxels.
  void prepare(std::size_t max_voxels);

  // Numbers the voxel of each run of points (see VoxelScratch): run r starts at point
  // run_start[r], its voxel's key is keys[run_start[r]]. A key not yet in the table opens
  // the next voxel number while fewer than `limit` are open; kOutside never does. Writes
  // each run's voxel number (-1: outside or refused) and the row its first point takes,
  // and its uncapped point count at counts[v] (counts[-1] must be writable: the refused
  // runs count there). Returns the number of voxels.
  std::int32_t number_runs(const Key* keys, const std::int32_t* run_start, std::int64_t runs, std::int32_t limit,
                           std::int32_t* run_voxel, std::int32_t* run_row, std::int32_t* counts);

  // The keys of the voxels the last call numbered, in number order.
  const Key* voxel_keys() const { return voxel_keys_.data(); }

 private:
  struct Entry {
    Key key;
    std::int32_t value;
  };
  static std::size_t hash(Key key, int shift) {
    return static_cast<std::size_t>((static_cast<std::uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift);
  }
  std::size_t slot(Key key) const { return hash(key, shift_); }

  std::vector<Entry> entries_;
  std::vector<Key> voxel_keys_;  // of the last call's voxels, by number
  std::size_t voxel_count_ = 0;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

// Scratch buffers of one voxelizer, reused between calls. A call cuts the points into
// runs of consecutive points with the same voxel (or all outside the grid): a spinning
// lidar's consecutive returns often share one, so the table is consulted once per run.
struct VoxelScratch {
  VoxelTable<std::uint32_t> narrow_table;
  VoxelTable<std::uint64_t> wide_table;
  std::vector<std::uint32_t> narrow_keys;  // per point
  std::vector<std::uint64_t> wide_keys;
  std::vector<std::int32_t> run_start;  // runs + 1 entries: first point of each run, then n
  std::vector<std::int32_t> point_run;  // run of each point
  std::vector<std::int32_t> run_voxel;  // voxel number of each run, or -1
  std::vector<std::int32_t> run_row;    // the row its first point would take in the voxel
  std::vector<std::int32_t> counts;     // per voxel, after a dummy slot for voxel -1
  std::int64_t runs = 0;
};

// Numbers the voxels of `points` in order of their first point, at most `max_voxels`
// (a point of a voxel refused is dropped). Returns the number of voxels M.
template <typename T>
std::int32_t number_voxels(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                           std::int32_t max_voxels, VoxelScratch& scratch);

// The (z, y, x) coordinates of the M voxels of the last numbering: `zyx` (M, 3).
void voxel_coordinates(const VoxelGridSpec& spec, const VoxelScratch& scratch, std::int32_t num_voxels,
                       std::int32_t* zyx);

// Hard voxelization's outputs for the last numbering: `voxels` (M, max_points, C), each
// voxel's first max_points points in input order, then zeros; `num_points` (M,).
template <typename T>
void fill_hard(const T* points, std::int64_t channels, std::int64_t stride, const VoxelScratch& scratch,
               std::int32_t num_voxels, int max_points, T* voxels, std::int32_t* num_points);

// Per point, its voxel's number in the last numbering (-1: outside or refused): `ids` (N,).
void point_voxel_ids(const VoxelScratch& scratch, std::int64_t* ids);

// Per point, its voxel's coordinates from `voxel_zyx` (M, 3), or -1s: `point_zyx` (N, 3).
void point_coordinates(const VoxelScratch& scratch, const std::int32_t* voxel_zyx, std::int32_t* point_zyx);

}  // namespace fastload
