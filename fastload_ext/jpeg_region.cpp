// Region JPEG decoding with the system libjpeg-turbo: decode only the rows and the
// column band a crop needs, at the smallest DCT scale that keeps the requested resolution.
//
// Why here and not in Python: libjpeg-turbo's jpeg_crop_scanline / jpeg_skip_scanlines
// (>= 1.5) are not exposed by any maintained Python binding together with DCT scaling.
// A random-resized crop keeps about half of a photo's pixels on average; skipping the
// other half, and decoding at 1/2..1/8 scale when the crop is large, is where a fused
// decode-and-crop beats "decode everything, then crop".
//
// Error handling: libjpeg reports errors through error_exit, which must not return. We
// longjmp back to the decode function; nothing with a destructor lives between setjmp
// and any libjpeg call. The one allocation, the output rows, is owned through the
// caller's RegionResult, not a local: a non-volatile local assigned after setjmp has an
// indeterminate value after the longjmp (in practice the register copy from setjmp time,
// null), and freeing through it leaked every buffer of a failed decode.
// Warnings are errors too: libjpeg reports a truncated file, a marker inside the
// entropy-coded data and entropy-coded data that does not end where the image does as
// warnings and would go on with gray or garbage pixels; a loader must not train on them.
// Some are only noticed at the end of the scan (a garbled segment without a marker
// desynchronizes the Huffman decoder until the data runs out or outlasts the image), so
// a decode that reads the last row also reads through the EOI marker
// (jpeg_finish_decompress). A crop that ends higher stops there: entropy-decoding the
// rows below it made a random-resized crop's decode about 20% slower. The bytes it
// leaves unread are scanned instead (check_unread_data): they must end with EOI and hold
// no other marker than restart markers, which catches truncation and random garbage
// below the crop, but not garbage there that holds no 0xFF byte.

#include "jpeg_region.h"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <jpeglib.h>

namespace fastload {
namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) {  // a warning: corrupt data libjpeg would otherwise paper over
    on_error(cinfo);
  }
}

void copy_message(char (&destination)[kErrorLength], const char* message) {
  std::snprintf(destination, kErrorLength, "%s", message);
}

// The largest denominator d in {8, 4, 2, 1} with extent / d >= minimum on both axes.
int choose_scale_denominator(int crop_w, int crop_h, int min_w, int min_h) {
  for (int d = 8; d > 1; d /= 2) {
    if (crop_w / d >= min_w && crop_h / d >= min_h) return d;
  }
  return 1;
}

// The entropy-coded data left after the last row a crop needs: it must reach EOI with no
// marker but restart markers (RSTn) on the way. Returns libjpeg's message for the
// problem, or null.
const char* check_unread_data(j_decompress_ptr cinfo) {
  if (jpeg_input_complete(cinfo)) return nullptr;  // a multi-scan file: libjpeg read it all
  const int marker = cinfo->unread_marker;  // where the entropy decoder's read-ahead stopped
  if (marker == 0xD9) return nullptr;
  if (marker != 0 && (marker < 0xD0 || marker > 0xD7)) return "Corrupt JPEG data: premature end of data segment";
  const JOCTET* p = cinfo->src->next_input_byte;
  const JOCTET* const end = p + cinfo->src->bytes_in_buffer;
  while ((p = static_cast<const JOCTET*>(std::memchr(p, 0xFF, static_cast<std::size_t>(end - p)))) != nullptr) {
    do ++p;
    while (p < end && *p == 0xFF);  // fill bytes may precede a marker
    if (p == end) break;
    const int next = *p++;
    if (next == 0xD9) return nullptr;  // EOI
    if (next != 0x00 && (next < 0xD0 || next > 0xD7)) return "Corrupt JPEG data: premature end of data segment";
  }
  return "Premature end of JPEG file";
}

}  // namespace

bool read_jpeg_header(const unsigned char* data, std::size_t size, HeaderResult* result) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  if (setjmp(err.jump)) {
    copy_message(result->error, err.message);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  result->width = static_cast<int>(cinfo.image_width);
  result->height = static_cast<int>(cinfo.image_height);
  result->components = cinfo.num_components;
  result->rgb_convertible = cinfo.jpeg_color_space != JCS_CMYK && cinfo.jpeg_color_space != JCS_YCCK;
  jpeg_destroy_decompress(&cinfo);
  return true;
}

bool decode_jpeg_region(const unsigned char* data, std::size_t size, const RegionRequest& request,
                        RegionResult* result) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  result->pixels = nullptr;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  if (setjmp(err.jump)) {
    copy_message(result->error, err.message);
    std::free(result->pixels);
    result->pixels = nullptr;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);

  const int image_w = static_cast<int>(cinfo.image_width);
  const int image_h = static_cast<int>(cinfo.image_height);
  // By subtraction: x + width can overflow an int for any x near 2^31.
  if (request.x < 0 || request.y < 0 || request.width < 1 || request.height < 1 ||
      request.width > image_w - request.x || request.height > image_h - request.y) {
    std::snprintf(result->error, sizeof(result->error), "crop (x=%d, y=%d, w=%d, h=%d) outside the %dx%d image",
                  request.x, request.y, request.width, request.height, image_w, image_h);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  const int d = choose_scale_denominator(request.width, request.height, request.min_width, request.min_height);
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned int>(d);
  cinfo.out_color_space = JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  jpeg_start_decompress(&cinfo);

  // The crop in scaled pixels, widened to whole pixels.
  const int out_w = static_cast<int>(cinfo.output_width);
  const int out_h = static_cast<int>(cinfo.output_height);
  int x0 = request.x / d;
  int y0 = request.y / d;
  int x1 = (request.x + request.width + d - 1) / d;
  int y1 = (request.y + request.height + d - 1) / d;
  if (x1 > out_w) x1 = out_w;
  if (y1 > out_h) y1 = out_h;

  // libjpeg-turbo widens the column band to whole iMCUs: remember where ours starts in it.
  JDIMENSION band_x = static_cast<JDIMENSION>(x0);
  JDIMENSION band_w = static_cast<JDIMENSION>(x1 - x0);
  if (band_w < cinfo.output_width) jpeg_crop_scanline(&cinfo, &band_x, &band_w);
  else band_x = 0;
  if (y0 > 0) jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(y0));

  const int rows = y1 - y0;
  const std::size_t stride = static_cast<std::size_t>(cinfo.output_width) * 3;
  result->pixels = static_cast<unsigned char*>(std::malloc(stride * static_cast<std::size_t>(rows)));
  if (result->pixels == nullptr) {
    copy_message(result->error, "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  while (static_cast<int>(cinfo.output_scanline) < y1) {
    JSAMPROW row = result->pixels + stride * (cinfo.output_scanline - static_cast<JDIMENSION>(y0));
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  // The rest of the file (see the top of this file).
  if (cinfo.output_scanline == cinfo.output_height) {
    jpeg_finish_decompress(&cinfo);
  } else if (const char* corrupt = check_unread_data(&cinfo)) {
    copy_message(result->error, corrupt);
    std::free(result->pixels);
    result->pixels = nullptr;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_destroy_decompress(&cinfo);

  result->rows = rows;
  result->band_width = static_cast<int>(stride / 3);
  result->left = x0 - static_cast<int>(band_x);
  result->width = x1 - x0;
  result->scale_denominator = d;
  return true;
}

}  // namespace fastload
