// Voxelization rules (the de-facto standard: spconv 2.x PointToVoxel and mmcv
// Voxelization on CPU, OpenPCDet), for points of C >= 3 columns (x, y, z, ...):
//
// * grid[d] = round((max[d] - min[d]) / voxel_size[d]), in float32, halves away from zero;
// * c[d] = floor((p[d] - min[d]) / voxel_size[d]) in the points' dtype with the float32
//   parameters converted to it; a point is kept only if 0 <= c[d] < grid[d] on every axis,
//   so NaN, +-inf and huge values are dropped and the upper bound is min + grid * size;
// * voxels are numbered in order of their first kept point; a point that would open
//   voxel number >= max_voxels is skipped, later points still fill voxels already open;
// * a voxel keeps its first max_points points in input order;
// * coordinates are (z, y, x).
//
// Performance: far-out points are rejected with comparisons only; the others cost one
// hash probe per change of voxel (consecutive points of a spinning-lidar scan usually
// share a voxel) against a table sized for max_voxels, not a dense grid (SECOND's has 92M
// cells); outputs are written once, front to back.

#include "voxelize.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace fastload {

namespace {

// The quotient the rule floors, computed exactly as linear_index does.
template <typename T>
T quotient(T p, float range_min, float voxel_size) {
  return (p - static_cast<T>(range_min)) / static_cast<T>(voxel_size);
}

// A coordinate P with quotient(P) >= grid. quotient is non-decreasing in p (a rounded
// subtraction, then a rounded division by a positive number), so every p >= P is out of
// the grid too. Found by stepping up from the range's upper bound and checking.
template <typename T>
T reject_threshold(float range_min, float range_max, float voxel_size, int grid) {
  T p = static_cast<T>(range_max);
  while (!(quotient<T>(p, range_min, voxel_size) >= static_cast<T>(grid))) p += static_cast<T>(voxel_size);
  return p;
}

}  // namespace

std::string VoxelGridSpec::init(const float voxel_size_xyz[3], const float range_xyzxyz[6]) {
  static const char* axis = "xyz";
  for (int d = 0; d < 3; ++d) {
    voxel_size[d] = voxel_size_xyz[d];
    range_min[d] = range_xyzxyz[d];
    range_max[d] = range_xyzxyz[d + 3];
    if (!(voxel_size[d] > 0.0f) || !std::isfinite(voxel_size[d])) {
      return std::string("voxel_size must be positive and finite; axis ") + axis[d] + " has " +
             std::to_string(voxel_size[d]);
    }
    if (!std::isfinite(range_min[d]) || !std::isfinite(range_max[d]) || !(range_max[d] > range_min[d])) {
      return std::string("point_cloud_range must have finite min < max; axis ") + axis[d] + " has [" +
             std::to_string(range_min[d]) + ", " + std::to_string(range_max[d]) + "]";
    }
    const float cells = std::round((range_max[d] - range_min[d]) / voxel_size[d]);
    if (!(cells >= 1.0f) || cells > static_cast<float>(std::numeric_limits<std::int32_t>::max())) {
      return std::string("the grid must have between 1 and 2^31 cells per axis; axis ") + axis[d] + " has " +
             std::to_string(cells);
    }
    grid[d] = static_cast<int>(cells);
    reject_at_f[d] = reject_threshold<float>(range_min[d], range_max[d], voxel_size[d], grid[d]);
    reject_at_d[d] = reject_threshold<double>(range_min[d], range_max[d], voxel_size[d], grid[d]);
  }
  if (static_cast<double>(grid[0]) * grid[1] * grid[2] > 4.0e18) {
    return "the grid has more than 4e18 cells: its linear index would overflow";
  }
  return {};
}

namespace {

// The voxel's linear index (z-major), or -1 if the point is outside the grid.
//
// Exactly the rule c = floor(q), keep iff 0 <= c < grid, without calling floor (a libm
// call on baseline x86-64): for an integer grid, 0 <= floor(q) < grid holds iff
// 0 <= q < grid (and NaN fails both), and for q >= 0 floor is truncation, one instruction.
template <typename T>
inline T reject_at(const VoxelGridSpec& spec, int d);
template <>
inline float reject_at<float>(const VoxelGridSpec& spec, int d) { return spec.reject_at_f[d]; }
template <>
inline double reject_at<double>(const VoxelGridSpec& spec, int d) { return spec.reject_at_d[d]; }

template <typename T>
inline std::int64_t linear_index(const T* p, const VoxelGridSpec& spec, std::int32_t zyx[3]) {
  // Fast, exact rejection of points far outside (most of a scan, for a front-facing range):
  // p < min gives a negative difference, hence q < 0; p >= reject_at gives q >= grid.
  for (int d = 0; d < 3; ++d) {
    if (p[d] < static_cast<T>(spec.range_min[d]) || p[d] >= reject_at<T>(spec, d)) return -1;
  }
  std::int64_t index = 0;
  for (int d = 2; d >= 0; --d) {
    const T q = (p[d] - static_cast<T>(spec.range_min[d])) / static_cast<T>(spec.voxel_size[d]);
    if (!(q >= T(0) && q < static_cast<T>(spec.grid[d]))) return -1;
    zyx[2 - d] = static_cast<std::int32_t>(q);
    index = index * spec.grid[d] + zyx[2 - d];
  }
  return index;
}

// Writes voxel v's rows from the points listed for it, then zeroes the rest: the
// output is written front to back (streaming), the points are gathered from the input,
// which is smaller than the output and mostly cached after the assignment pass.
template <typename T, int C>
void write_voxels(const T* points, std::int64_t stride, std::int64_t channels, const std::int32_t* order,
                  const std::int32_t* counts, std::int32_t num_voxels, int max_points, T* voxels) {
  const std::int64_t c = C > 0 ? C : channels;
  T* out = voxels;
  for (std::int32_t v = 0; v < num_voxels; ++v) {
    const std::int32_t used = counts[v];
    for (std::int32_t r = 0; r < used; ++r, out += c) {
      const T* src = points + static_cast<std::int64_t>(*order++) * stride;
      if (C > 0) {
        for (int k = 0; k < C; ++k) out[k] = src[k];
      } else {
        std::memcpy(out, src, sizeof(T) * static_cast<std::size_t>(c));
      }
    }
    const std::int64_t padding = (max_points - used) * c;
    std::memset(out, 0, sizeof(T) * static_cast<std::size_t>(padding));
    out += padding;
  }
}

}  // namespace

template <typename T, typename Key>
std::int32_t assign_hard_with(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                              int max_points, int max_voxels, VoxelTable<Key>& table, PointAssignment& out,
                              std::vector<std::int32_t>& coords_zyx, std::vector<std::int32_t>& counts) {
  table.prepare(static_cast<std::size_t>(max_voxels));
  out.voxel.resize(static_cast<std::size_t>(n));
  out.row.resize(static_cast<std::size_t>(n));
  coords_zyx.clear();
  counts.clear();
  std::int32_t num_voxels = 0;
  std::int64_t cached_key = -1;
  std::int32_t cached_voxel = -1;
  std::int32_t zyx[3];
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t key = linear_index(points + i * stride, spec, zyx);
    std::int32_t voxel = -1;
    if (key >= 0) {
      if (key == cached_key) {
        voxel = cached_voxel;
      } else {
        bool inserted = false;
        voxel = table.find_or_insert(static_cast<Key>(key), num_voxels < max_voxels ? num_voxels : -1, inserted);
        if (inserted) {
          ++num_voxels;
          coords_zyx.push_back(zyx[0]);
          coords_zyx.push_back(zyx[1]);
          coords_zyx.push_back(zyx[2]);
          counts.push_back(0);
        }
        if (voxel >= 0) {  // a refused voxel is not cached: it stays refused either way
          cached_key = key;
          cached_voxel = voxel;
        }
      }
    }
    out.voxel[i] = voxel;
    if (voxel >= 0 && counts[voxel] < max_points) {
      out.row[i] = counts[voxel]++;
    } else {
      out.row[i] = -1;
    }
  }
  return num_voxels;
}

template <typename T>
std::int32_t assign_hard(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                         int max_points, int max_voxels, VoxelTables& tables, PointAssignment& out,
                         std::vector<std::int32_t>& coords_zyx, std::vector<std::int32_t>& counts) {
  if (spec.narrow_keys()) {
    return assign_hard_with(points, n, stride, spec, max_points, max_voxels, tables.narrow, out, coords_zyx, counts);
  }
  return assign_hard_with(points, n, stride, spec, max_points, max_voxels, tables.wide, out, coords_zyx, counts);
}

template <typename T>
void fill_hard(const T* points, std::int64_t n, std::int64_t channels, std::int64_t stride,
               PointAssignment& assignment, const std::int32_t* counts, std::int32_t num_voxels,
               int max_points, T* voxels) {
  // The kept points, grouped by voxel in row order: a counting sort whose target (4 bytes
  // per kept point) stays in cache, unlike the output.
  std::vector<std::int32_t>& start = assignment.voxel_start;
  start.resize(static_cast<std::size_t>(num_voxels) + 1);
  start[0] = 0;
  for (std::int32_t v = 0; v < num_voxels; ++v) start[v + 1] = start[v] + counts[v];
  std::vector<std::int32_t>& order = assignment.order;
  order.resize(static_cast<std::size_t>(start[num_voxels]));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t row = assignment.row[i];
    if (row >= 0) order[start[assignment.voxel[i]] + row] = static_cast<std::int32_t>(i);
  }
  switch (channels) {
    case 3: write_voxels<T, 3>(points, stride, channels, order.data(), counts, num_voxels, max_points, voxels); break;
    case 4: write_voxels<T, 4>(points, stride, channels, order.data(), counts, num_voxels, max_points, voxels); break;
    case 5: write_voxels<T, 5>(points, stride, channels, order.data(), counts, num_voxels, max_points, voxels); break;
    default: write_voxels<T, 0>(points, stride, channels, order.data(), counts, num_voxels, max_points, voxels); break;
  }
}

template <typename T, typename Key>
std::int32_t voxelize_dynamic_with(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                                   VoxelTable<Key>& table, std::int32_t* point_coords, std::int64_t* point_voxel,
                                   std::vector<std::int32_t>& voxel_coords) {
  table.prepare(static_cast<std::size_t>(n));
  voxel_coords.clear();
  std::int32_t num_voxels = 0;
  std::int64_t cached_key = -1;
  std::int32_t cached_voxel = -1;
  std::int32_t zyx[3];
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t key = linear_index(points + i * stride, spec, zyx);
    std::int32_t* coords = point_coords + 3 * i;
    if (key < 0) {
      coords[0] = coords[1] = coords[2] = -1;
      point_voxel[i] = -1;
      continue;
    }
    if (key != cached_key) {
      bool inserted = false;
      cached_voxel = table.find_or_insert(static_cast<Key>(key), num_voxels, inserted);
      if (inserted) {
        ++num_voxels;
        voxel_coords.insert(voxel_coords.end(), zyx, zyx + 3);
      }
      cached_key = key;
    }
    coords[0] = zyx[0];
    coords[1] = zyx[1];
    coords[2] = zyx[2];
    point_voxel[i] = cached_voxel;
  }
  return num_voxels;
}

template <typename T>
std::int32_t voxelize_dynamic(const T* points, std::int64_t n, std::int64_t stride, const VoxelGridSpec& spec,
                              VoxelTables& tables, std::int32_t* point_coords, std::int64_t* point_voxel,
                              std::vector<std::int32_t>& voxel_coords) {
  if (spec.narrow_keys()) {
    return voxelize_dynamic_with(points, n, stride, spec, tables.narrow, point_coords, point_voxel, voxel_coords);
  }
  return voxelize_dynamic_with(points, n, stride, spec, tables.wide, point_coords, point_voxel, voxel_coords);
}

#define FASTLOAD_INSTANTIATE(T)                                                                                   \
  template std::int32_t assign_hard<T>(const T*, std::int64_t, std::int64_t, const VoxelGridSpec&, int, int,     \
                                       VoxelTables&, PointAssignment&, std::vector<std::int32_t>&,               \
                                       std::vector<std::int32_t>&);                                              \
  template void fill_hard<T>(const T*, std::int64_t, std::int64_t, std::int64_t, PointAssignment&,              \
                             const std::int32_t*, std::int32_t, int, T*);                                        \
  template std::int32_t voxelize_dynamic<T>(const T*, std::int64_t, std::int64_t, const VoxelGridSpec&,         \
                                            VoxelTables&, std::int32_t*, std::int64_t*, std::vector<std::int32_t>&);
FASTLOAD_INSTANTIATE(float)
FASTLOAD_INSTANTIATE(double)
#undef FASTLOAD_INSTANTIATE

}  // namespace fastload
