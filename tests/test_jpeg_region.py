"""fastload._ext's region JPEG decoder on bad input: failed decodes free what they took,
crop bounds are checked without overflow, damage below a crop is seen where the docs say,
and fuzzed files decode or raise ValueError."""

from __future__ import annotations

import ctypes
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastload import _ext

from .jpeg_files import garble


@pytest.fixture(scope="module")
def photo() -> bytes:
    import skimage.data

    encoded = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(encoded, "JPEG", quality=90)  # 512x512
    return encoded.getvalue()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def allocated_bytes() -> int:
    """Bytes malloc has handed out and not taken back: AddressSanitizer's count when its
    allocator replaces glibc's (under `make sanitize`), else glibc's mallinfo2 (heap and
    mmapped chunks)."""
    process = ctypes.CDLL(None)
    if hasattr(process, "__sanitizer_get_current_allocated_bytes"):
        process.__sanitizer_get_current_allocated_bytes.restype = ctypes.c_size_t
        return process.__sanitizer_get_current_allocated_bytes()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def test_failed_decodes_free_their_pixel_buffer(photo):
    """A truncated file fails after the output rows were allocated (libjpeg longjmps out of
    jpeg_read_scanlines): 300 such decodes of a 512x512 crop would hold 236 MB if the
    buffer were lost on that path."""
    truncated = photo[: len(photo) // 2]
    with pytest.raises(ValueError, match="Premature end of JPEG file"):
        _ext.decode_jpeg_region(truncated, 0, 0, 512, 512, 512, 512)
    before = allocated_bytes()
    for _ in range(300):
        with pytest.raises(ValueError):
            _ext.decode_jpeg_region(truncated, 0, 0, 512, 512, 512, 512)
    grown = allocated_bytes() - before
    assert grown < 512 * 512 * 3 * 10, f"{grown / 2**20:.0f} MiB still allocated after 300 failed decodes"


@pytest.mark.parametrize("x, y, width, height", [
    (2**31 - 10, 0, 100, 10),  # x + width overflows an int
    (0, 2**31 - 10, 10, 100),
    (2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1),
    (500, 0, 13, 10),  # one column past the right edge
    (0, 0, 512, 513),
    (-1, 0, 10, 10),
    (0, 0, 0, 10),
])
def test_crops_outside_the_image_are_refused(photo, x, y, width, height):
    with pytest.raises(ValueError, match=rf"crop \(x={x}, y={y}, w={width}, h={height}\) outside the 512x512 image"):
        _ext.decode_jpeg_region(photo, x, y, width, height, 1, 1)


def test_a_crop_reaching_the_corner_decodes(photo):
    band, left, width, scale = _ext.decode_jpeg_region(photo, 500, 400, 12, 112, 12, 112)
    assert (scale, width, band.shape[0]) == (1, 12, 112) and left + width <= band.shape[1]


def test_a_crop_above_truncation_fails(photo):
    with pytest.raises(ValueError, match="Premature end of JPEG file"):
        _ext.decode_jpeg_region(photo[: len(photo) * 3 // 4], 0, 0, 64, 64, 64, 64)


def test_a_crop_above_garbage_fails(photo):
    """The garbage covers the middle of the data, far below the crop's 64 rows: never decoded,
    but its bytes hold markers where only entropy-coded data may be."""
    for seed in range(5):
        with pytest.raises(ValueError, match="Corrupt JPEG data"):
            _ext.decode_jpeg_region(garble(photo, seed), 0, 0, 64, 64, 64, 64)


def test_marker_free_garbage_below_a_crop_goes_unseen(photo):
    """The documented limit of a crop's check: only decoding those rows would show it."""
    clean = _ext.decode_jpeg_region(photo, 0, 0, 64, 64, 64, 64)[0]
    garbled = _ext.decode_jpeg_region(garble(photo, 0, markers=False), 0, 0, 64, 64, 64, 64)[0]
    assert np.array_equal(garbled, clean)


def test_marker_free_garbage_fails_a_decode_that_reaches_the_last_row(photo):
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        _ext.decode_jpeg_region(garble(photo, 0, markers=False), 448, 448, 64, 64, 64, 64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["truncate", "garble", "garble without markers", "flip bytes"]), st.integers(0, 2**32 - 1),
       st.integers(0, 511), st.integers(0, 511), st.integers(1, 512), st.integers(1, 512), st.integers(1, 256))
def test_fuzzed_jpegs_decode_a_well_formed_band_or_raise_value_error(photo, damage, seed, x, y, width, height, minimum):
    rng = np.random.default_rng(seed)
    if damage == "truncate":
        data = photo[: int(rng.integers(0, len(photo)))]
    elif damage == "garble":
        data = garble(photo, seed, length=int(rng.integers(1, 3000)))
    elif damage == "garble without markers":
        data = garble(photo, seed, length=int(rng.integers(1, 3000)), markers=False)
    else:  # anywhere, the header's tables included
        data = bytearray(photo)
        for offset in rng.integers(0, len(photo), 8):
            data[offset] = int(rng.integers(0, 256))
        data = bytes(data)
    width, height = min(width, 512 - x), min(height, 512 - y)
    try:
        band, left, crop_width, scale = _ext.decode_jpeg_region(data, x, y, width, height, minimum, minimum)
    except ValueError:
        return
    assert band.dtype == np.uint8 and band.ndim == 3 and band.shape[2] == 3
    assert scale in (1, 2, 4, 8) and 0 <= left and left + crop_width <= band.shape[1]
    assert band.shape[0] == (y + height + scale - 1) // scale - y // scale
    assert crop_width == (x + width + scale - 1) // scale - x // scale
