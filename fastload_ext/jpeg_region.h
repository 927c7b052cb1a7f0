// Region JPEG decoding (see jpeg_region.cpp). Plain C++ over byte buffers: no Python here.
#pragma once

#include <cstddef>

namespace fastload {

constexpr std::size_t kErrorLength = 200;

struct HeaderResult {
  int width = 0;
  int height = 0;
  int components = 0;
  bool rgb_convertible = true;  // false for CMYK/YCCK, which libjpeg cannot turn into RGB
  char error[kErrorLength] = {0};
};

// A crop of the full-resolution image, and the smallest size its decode may have.
struct RegionRequest {
  int x, y, width, height;
  int min_width, min_height;
};

// `pixels` (malloc'd, freed by the caller; null after a failed decode) holds `rows` rows of
// `band_width` RGB pixels: the crop, scaled down by `scale_denominator`, starts `left`
// pixels into each row and is `width` pixels wide. The band is wider than the crop
// because libjpeg-turbo decodes whole iMCU columns.
struct RegionResult {
  unsigned char* pixels = nullptr;
  int rows = 0;
  int band_width = 0;
  int left = 0;
  int width = 0;
  int scale_denominator = 1;
  char error[kErrorLength] = {0};
};

bool read_jpeg_header(const unsigned char* data, std::size_t size, HeaderResult* result);
bool decode_jpeg_region(const unsigned char* data, std::size_t size, const RegionRequest& request,
                        RegionResult* result);

}  // namespace fastload
