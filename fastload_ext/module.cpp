// Python bindings of fastload's native code: fastload._ext. Buffers in, numpy arrays out;
// the GIL is released while C++ works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "jpeg_region.h"

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
}
