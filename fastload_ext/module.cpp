// Python bindings of fastload's native code: fastload._ext. Buffers in, numpy arrays out;
// the GIL is released while C++ works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "jpeg_region.h"
#include "voxelize.h"

namespace py = pybind11;

namespace {

py::buffer_info contiguous_bytes(const py::buffer& buffer) {
  py::buffer_info info = buffer.request();
  if (info.ndim != 1 || info.itemsize != 1 || (info.ndim == 1 && info.strides[0] != 1)) {
    throw py::value_error("expected a contiguous bytes-like object (bytes, bytearray, memoryview, uint8 array)");
  }
  return info;
}

py::tuple jpeg_header(const py::buffer& buffer) {
  py::buffer_info info = contiguous_bytes(buffer);
  fastload::HeaderResult result;
  bool ok;
  {
    py::gil_scoped_release release;
    ok = fastload::read_jpeg_header(static_cast<const unsigned char*>(info.ptr), static_cast<std::size_t>(info.size),
                                    &result);
  }
  if (!ok) throw py::value_error(std::string("not a decodable JPEG: ") + result.error);
  return py::make_tuple(result.width, result.height, result.components, result.rgb_convertible);
}

py::tuple decode_jpeg_region(const py::buffer& buffer, int x, int y, int width, int height, int min_width,
                             int min_height) {
  py::buffer_info info = contiguous_bytes(buffer);
  fastload::RegionRequest request{x, y, width, height, min_width, min_height};
  fastload::RegionResult result;
  bool ok;
  {
    py::gil_scoped_release release;
    ok = fastload::decode_jpeg_region(static_cast<const unsigned char*>(info.ptr),
                                      static_cast<std::size_t>(info.size), request, &result);
  }
  if (!ok) throw py::value_error(std::string("JPEG decode failed: ") + result.error);
  // Hand the malloc'd rows to numpy without a copy; the capsule frees them.
  py::capsule owner(result.pixels, [](void* p) { std::free(p); });
  py::array_t<unsigned char> band({result.rows, result.band_width, 3},
                                  {static_cast<py::ssize_t>(result.band_width) * 3, py::ssize_t{3}, py::ssize_t{1}},
                                  result.pixels, owner);
  return py::make_tuple(band, result.left, result.width, result.scale_denominator);
}

// (N, C >= 3) float32/float64 points whose rows may be strided but whose columns are not.
struct PointView {
  const void* data;
  std::int64_t n, channels, stride;
  bool is_double;
};

PointView view_points(const py::array& points) {
  const bool is_float = points.dtype().is(py::dtype::of<float>());
  const bool is_double = points.dtype().is(py::dtype::of<double>());
  if (!is_float && !is_double) {
    throw py::type_error("points must be float32 or float64, got " + std::string(py::str(points.dtype())));
  }
  if (points.ndim() != 2 || points.shape(1) < 3) {
    std::string shape = "(";
    for (py::ssize_t d = 0; d < points.ndim(); ++d) shape += std::to_string(points.shape(d)) + (d + 1 < points.ndim() ? ", " : "");
    throw py::value_error("points must have shape (N, C) with C >= 3 (x, y, z, ...), got " + shape + ")");
  }
  const py::ssize_t item = points.itemsize();
  const py::ssize_t n = points.shape(0);
  if (n >= std::numeric_limits<std::int32_t>::max()) {  // point indices are 32-bit
    throw py::value_error("points must have fewer than 2^31 - 1 rows, got " + std::to_string(n));
  }
  if (n == 0) return {points.data(), 0, points.shape(1), points.shape(1), is_double};  // strides are arbitrary
  const bool rows_ok = n == 1 || (points.strides(0) % item == 0 && points.strides(0) >= item * points.shape(1));
  if (points.strides(1) != item || !rows_ok) {
    throw py::value_error("points must be row-major with contiguous columns (use np.ascontiguousarray)");
  }
  return {points.data(), n, points.shape(1), n == 1 ? points.shape(1) : points.strides(0) / item, is_double};
}

fastload::VoxelGridSpec make_spec(const std::array<float, 3>& voxel_size, const std::array<float, 6>& range) {
  fastload::VoxelGridSpec spec;
  const std::string error = spec.init(voxel_size.data(), range.data());
  if (!error.empty()) throw py::value_error(error);
  return spec;
}

class Voxelizer {
 public:
  Voxelizer(const std::array<float, 3>& voxel_size, const std::array<float, 6>& range, int max_points,
            int max_voxels)
      : spec_(make_spec(voxel_size, range)), max_points_(max_points), max_voxels_(max_voxels) {
    if (max_points < 1) throw py::value_error("max_points_per_voxel must be >= 1, got " + std::to_string(max_points));
    if (max_voxels < 1) throw py::value_error("max_voxels must be >= 1, got " + std::to_string(max_voxels));
  }

  py::tuple call(const py::array& points, bool return_point_voxel_id) {
    const PointView p = view_points(points);
    // The scratch buffers are per object, so calls are serialised. Lock order: mutex, then
    // GIL. `run` drops the GIL while it works and takes it back with the mutex held, so
    // the mutex is never waited for with the GIL held: a thread blocked here holding the
    // GIL would keep the mutex's owner from ever getting the GIL back.
    std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
    {
      py::gil_scoped_release release;
      lock.lock();
    }
    return p.is_double ? run<double>(p, return_point_voxel_id) : run<float>(p, return_point_voxel_id);
  }

  std::array<int, 3> grid_size() const { return {spec_.grid[0], spec_.grid[1], spec_.grid[2]}; }

 private:
  template <typename T>
  py::tuple run(const PointView& p, bool return_point_voxel_id) {
    const T* data = static_cast<const T*>(p.data);
    std::int32_t m;
    {
      py::gil_scoped_release release;
      m = fastload::number_voxels<T>(data, p.n, p.stride, spec_, max_voxels_, scratch_);
    }
    py::array_t<T> voxels({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(max_points_),
                           static_cast<py::ssize_t>(p.channels)});
    py::array_t<std::int32_t> coords({static_cast<py::ssize_t>(m), py::ssize_t{3}});
    py::array_t<std::int32_t> num_points(static_cast<py::ssize_t>(m));
    T* voxel_data = voxels.mutable_data();
    std::int32_t* coord_data = coords.mutable_data();
    std::int32_t* count_data = num_points.mutable_data();
    {
      py::gil_scoped_release release;
      fastload::fill_hard<T>(data, p.channels, p.stride, scratch_, m, max_points_, voxel_data, count_data);
      fastload::voxel_coordinates(spec_, scratch_, m, coord_data);
    }
    if (!return_point_voxel_id) return py::make_tuple(voxels, coords, num_points);
    py::array_t<std::int64_t> point_voxel_id(static_cast<py::ssize_t>(p.n));
    fastload::point_voxel_ids(scratch_, point_voxel_id.mutable_data());
    return py::make_tuple(voxels, coords, num_points, point_voxel_id);
  }

  fastload::VoxelGridSpec spec_;
  int max_points_, max_voxels_;
  fastload::VoxelScratch scratch_;
  std::mutex mutex_;
};

template <typename T>
py::tuple run_dynamic(const PointView& p, const fastload::VoxelGridSpec& spec) {
  fastload::VoxelScratch scratch;
  std::int32_t m;
  {
    py::gil_scoped_release release;
    // Every point may open a voxel: the limit is n, never reached.
    m = fastload::number_voxels<T>(static_cast<const T*>(p.data), p.n, p.stride, spec,
                                   static_cast<std::int32_t>(p.n), scratch);
  }
  py::array_t<std::int32_t> point_coords({static_cast<py::ssize_t>(p.n), py::ssize_t{3}});
  py::array_t<std::int32_t> voxel_coords({static_cast<py::ssize_t>(m), py::ssize_t{3}});
  py::array_t<std::int64_t> point_voxel(static_cast<py::ssize_t>(p.n));
  std::int32_t* voxel_zyx = voxel_coords.mutable_data();
  std::int32_t* point_zyx = point_coords.mutable_data();
  std::int64_t* ids = point_voxel.mutable_data();
  {
    py::gil_scoped_release release;
    fastload::voxel_coordinates(spec, scratch, m, voxel_zyx);
    fastload::point_voxel_ids(scratch, ids);
    fastload::point_coordinates(scratch, voxel_zyx, point_zyx);
  }
  return py::make_tuple(point_coords, voxel_coords, point_voxel);
}

py::tuple dynamic_voxelize(const py::array& points, const std::array<float, 3>& voxel_size,
                           const std::array<float, 6>& range) {
  const PointView p = view_points(points);
  const fastload::VoxelGridSpec spec = make_spec(voxel_size, range);
  return p.is_double ? run_dynamic<double>(p, spec) : run_dynamic<float>(p, spec);
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
  m.doc() = "fastload's native code (C++17, pybind11 over buffers).";
  m.def("jpeg_header", &jpeg_header, py::arg("data"),
        "(width, height, components, rgb_convertible) of a JPEG, reading only its header.\n"
        "Raises ValueError for data that is not a JPEG.");
  m.def("decode_jpeg_region", &decode_jpeg_region, py::arg("data"), py::arg("x"), py::arg("y"), py::arg("width"),
        py::arg("height"), py::arg("min_width"), py::arg("min_height"),
        "Decode the crop (x, y, width, height) of a JPEG to RGB at the smallest DCT scale (1, 1/2, 1/4, 1/8)\n"
        "that keeps at least (min_width, min_height) pixels over it, decoding only the rows and iMCU\n"
        "columns the crop covers. Returns (band, left, width, scale_denominator): band is a uint8\n"
        "(rows, band_width, 3) array whose columns [left, left + width) are the crop.\n"
        "Raises ValueError for corrupt or truncated data (libjpeg warnings are errors).");
  py::class_<Voxelizer>(m, "Voxelizer", "Hard voxelization with buffers kept between calls (see voxelize.cpp).")
      .def(py::init<const std::array<float, 3>&, const std::array<float, 6>&, int, int>(), py::arg("voxel_size"),
           py::arg("point_cloud_range"), py::arg("max_points_per_voxel"), py::arg("max_voxels"))
      .def("__call__", &Voxelizer::call, py::arg("points"), py::arg("return_point_voxel_id") = false,
           "(voxels (M, P, C), coords (M, 3) int32 zyx, num_points (M,) int32[, point_voxel_id (N,) int64]).")
      .def_property_readonly("grid_size", &Voxelizer::grid_size, "(x, y, z) cells of the grid.");
  m.def("dynamic_voxelize", &dynamic_voxelize, py::arg("points"), py::arg("voxel_size"), py::arg("point_cloud_range"),
        "(point_coords (N, 3) int32 zyx with -1 rows for dropped points, voxel_coords (K, 3) int32 in order of\n"
        "first appearance, point_voxel (N,) int64 index into voxel_coords or -1).");
}
