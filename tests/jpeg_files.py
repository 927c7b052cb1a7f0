"""Damaged JPEG files for the decoder tests: garbled entropy-coded data, truncation, and a
decompression bomb (a tiny file whose header claims a huge image)."""

from __future__ import annotations

import io

import numpy as np

SOF_MARKERS = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
SOS = 0xDA


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, offset of the marker, offset after its segment)`` for the segments of a
    JPEG's header, up to and including the first SOS (start of scan)."""
    found, i = [], 2  # after SOI
    while True:
        if data[i] != 0xFF:
            raise ValueError(f"no marker at offset {i}")
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        found.append((marker, i, i + 2 + length))
        if marker == SOS:
            return found
        i += 2 + length


def entropy_coded_range(data: bytes) -> tuple[int, int]:
    """``[start, end)`` of a single-scan JPEG's entropy-coded data (between SOS and EOI)."""
    return segments(data)[-1][2], len(data) - 2


def garble(data: bytes, seed: int, length: int = 3000, markers: bool = True) -> bytes:
    """``data`` with ``length`` random bytes written over the middle of its entropy-coded
    data. ``markers=False`` keeps 0xFF out of them: then no marker can appear, and only a
    decoder that reads the scan to its end can tell (the Huffman decoder loses step and the
    data no longer ends where the image does)."""
    start, end = entropy_coded_range(data)
    if end - start < length + 2:
        raise ValueError(f"entropy-coded data of {end - start} bytes is too short for {length} bytes of garbage")
    noise = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8)
    if not markers:
        noise[noise == 0xFF] = 0x7F
    offset = (start + end - length) // 2
    return data[:offset] + noise.tobytes() + data[offset + length :]


def with_claimed_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` whose SOF header claims ``width`` × ``height`` (the entropy-coded data is unchanged)."""
    for marker, offset, _ in segments(data):
        if marker in SOF_MARKERS:
            # SOF: FF Cn, length (2), precision (1), height (2), width (2), ...
            out = bytearray(data)
            out[offset + 5 : offset + 7] = height.to_bytes(2, "big")
            out[offset + 7 : offset + 9] = width.to_bytes(2, "big")
            return bytes(out)
    raise ValueError("no SOF segment")


def bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A JPEG of a few hundred bytes (an 8×8 gray image) whose header claims ``width`` × ``height``."""
    from PIL import Image

    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(encoded, "JPEG", quality=90)
    return with_claimed_size(encoded.getvalue(), width, height)
