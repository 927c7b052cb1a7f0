"""Image decoders behind one name: the single place that decides which one runs.

Every decoder turns encoded bytes into an RGB ``uint8`` tensor of shape ``(3, H, W)``
(often a channels-last view of the decoder's own buffer: no copy), optionally at a
reduced DCT scale that keeps at least ``min_size`` pixels (JPEG only).

===============  ==========================================================  ==========
name             what                                                        formats
===============  ==========================================================  ==========
``fastload``     fastload's libjpeg-turbo binding; the only one that can     JPEG
                 decode just a crop region (used by the fused transforms)
``simplejpeg``   simplejpeg (bundled libjpeg-turbo), fastest full decode     JPEG
``torchvision``  ``torchvision.io.decode_jpeg`` (libjpeg-turbo)               JPEG
``pillow``       Pillow, or Pillow-SIMD when installed (see ``pillow_flavour``)  any
===============  ==========================================================  ==========

``"auto"`` is the fastest available for the job (measured: see the README's decoder
table). Formats a JPEG decoder cannot read (PNG, CMYK JPEG, ...) go to Pillow.

Before any decoder allocates, the size the image's header claims is checked against
:data:`MAX_IMAGE_PIXELS` (a JPEG of a few hundred bytes can claim 60000×60000 pixels).

Corrupt data: ``fastload`` and ``simplejpeg`` raise for every warning libjpeg gives: a
truncated file, a marker inside the entropy-coded data, entropy-coded data that does not
end where the image does. ``torchvision`` raises for truncated files and libjpeg's errors
but only prints its corrupt-data warnings to stderr and returns the damaged image;
``pillow`` raises for truncated files and libjpeg's errors and ignores the warnings. No
decoder can see garbage that happens to decode as valid entropy-coded data ending where
the original data did. The fused transforms (:mod:`fastload.image.transforms`) decode the
rows down to the crop's last one like ``fastload``, and check the bytes below only for
truncation and stray markers.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch

from .. import extension

JPEG_MAGIC = b"\xff\xd8\xff"

#: Full-image decoders from fastest to slowest on CPU (measured: the README's decoder table).
FULL_DECODE_PREFERENCE = ("simplejpeg", "fastload", "torchvision", "pillow")
DECODERS = ("fastload", "simplejpeg", "torchvision", "pillow")


#: The most pixels (width × height, as the header claims) an image may have: larger ones
#: raise :class:`ImageDecodeError` before any decoder allocates for them. Pillow's default
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (about 268 MB of RGB). ``None`` disables the check. Set it
#: at import time or in the loader's ``worker_init_fn``: workers that are started with
#: ``spawn`` import this module afresh. The ``pillow`` decoder also keeps Pillow's own
#: check (a ``DecompressionBombError`` past twice ``PIL.Image.MAX_IMAGE_PIXELS``).
MAX_IMAGE_PIXELS: int | None = 89_478_485


class ImageDecodeError(ValueError):
    """Encoded data that the decoder could not turn into an image."""


def check_size(width: int, height: int) -> None:
    """Raise :class:`ImageDecodeError` if ``width`` × ``height`` is over :data:`MAX_IMAGE_PIXELS`."""
    limit = MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageDecodeError(
            f"the image claims {width}x{height} = {width * height:,} pixels, more than "
            f"fastload.image.decoders.MAX_IMAGE_PIXELS = {limit:,} (a decompression bomb?); "
            "raise that limit, or set it to None, to decode it")


def jpeg_header(data: bytes | memoryview | np.ndarray) -> tuple[int, int, bool]:
    """``(width, height, rgb_convertible)`` of a JPEG from its header alone, after
    :func:`check_size`. ``rgb_convertible`` is False for CMYK/YCCK, which libjpeg cannot turn
    into RGB.

    Raises:
        ImageDecodeError: the header is not a decodable JPEG's, or claims too many pixels.
    """
    if not extension.available():
        return _pillow_jpeg_header(data)
    try:
        width, height, _, rgb = extension.extension("fastload.image.decoders.jpeg_header").jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(f"cannot decode JPEG ({len(data)} bytes): {exc}") from exc
    check_size(width, height)
    return width, height, rgb


def _pillow_jpeg_header(data: bytes | memoryview | np.ndarray) -> tuple[int, int, bool]:
    """:func:`jpeg_header` without fastload's extension: Pillow reads the header alone."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            (width, height), mode = image.size, image.mode
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode JPEG ({len(data)} bytes): {exc}") from exc
    check_size(width, height)
    return width, height, mode != "CMYK"


def is_jpeg(data: bytes | memoryview | np.ndarray) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


def pillow_flavour() -> str:
    """``"pillow-simd <version>"`` when Pillow-SIMD provides ``PIL``, else ``"pillow <version>"``."""
    import PIL

    try:
        if importlib.metadata.version("pillow-simd") == PIL.__version__:
            return f"pillow-simd {PIL.__version__}"
    except importlib.metadata.PackageNotFoundError:
        pass
    return f"pillow {PIL.__version__}"


def available(name: str) -> bool:
    if name == "fastload":
        return extension.available()
    if name == "simplejpeg":
        return importlib.util.find_spec("simplejpeg") is not None
    return name in ("torchvision", "pillow")


@functools.cache
def _auto() -> str:
    chosen = next(n for n in FULL_DECODE_PREFERENCE if available(n))
    logging.getLogger("fastload").info("fastload.image: decoder='auto' uses %s", chosen)
    return chosen


def resolve(name: str) -> str:
    """The decoder ``name`` stands for (``"auto"`` → the fastest full decoder available,
    logged once on the ``fastload`` logger)."""
    if name == "auto":
        return _auto()
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose from {', '.join(DECODERS)} or 'auto'")
    if name == "fastload" and not available(name):
        extension.extension("decoder='fastload'")  # raises, saying how to get it
    if not available(name):
        raise ValueError(f"decoder {name!r} is not installed")
    return name


def _hwc_to_chw(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:  # grayscale
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(array).permute(2, 0, 1)


# Each decoder: (data, (width, height) from the JPEG header or None, min_size) -> (3, H, W).
def _decode_simplejpeg(data: bytes, size: tuple[int, int] | None, min_size: tuple[int, int]) -> torch.Tensor:
    import simplejpeg

    # strict: libjpeg's corrupt-data warnings raise instead of returning gray or garbage.
    return _hwc_to_chw(simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_size[0], min_height=min_size[1],
                                              strict=True))


def _decode_torchvision(data: bytes, size: tuple[int, int] | None, min_size: tuple[int, int]) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image I/O in favour of TorchCodec
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _decode_fastload(data: bytes, size: tuple[int, int] | None, min_size: tuple[int, int]) -> torch.Tensor:
    assert size is not None  # decode() routes only RGB-convertible JPEGs here
    minimum = size if min_size == (0, 0) else min_size  # (0, 0): full resolution
    band, left, crop_width, _ = extension.extension("decoder='fastload'").decode_jpeg_region(data, 0, 0, *size,
                                                                                            *minimum)
    return _hwc_to_chw(band[:, left : left + crop_width])


def _decode_pillow(data: bytes, size: tuple[int, int] | None, min_size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        check_size(*image.size)
        if min_size != (0, 0) and image.format == "JPEG":
            image.draft("RGB", min_size)  # DCT scaling, keeping at least min_size
        return _hwc_to_chw(np.array(image.convert("RGB")))  # PIL's own buffer is read-only


_FULL: dict[str, Callable[[bytes, tuple[int, int] | None, tuple[int, int]], torch.Tensor]] = {
    "fastload": _decode_fastload,
    "simplejpeg": _decode_simplejpeg,
    "torchvision": _decode_torchvision,
    "pillow": _decode_pillow,
}


def decode(data: bytes, decoder: str = "auto", min_size: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Decode ``data`` to an RGB ``uint8`` ``(3, H, W)`` tensor.

    ``min_size`` = ``(width, height)``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale if
    that keeps at least this many pixels; ``(0, 0)`` means full resolution. Non-JPEG data
    and JPEGs that libjpeg cannot turn into RGB (CMYK) go to Pillow.

    Raises:
        ImageDecodeError: corrupt, truncated or non-image data (what each decoder detects:
            see the module's docstring), or an image over :data:`MAX_IMAGE_PIXELS`.
    """
    name = resolve(decoder)
    size = None
    if is_jpeg(data):
        width, height, rgb = jpeg_header(data)
        size = (width, height)
        if not rgb:
            name = "pillow"
    else:
        name = "pillow"
    try:
        return _FULL[name](data, size, min_size)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes) with {name}: {exc}") from exc
