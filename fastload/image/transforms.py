"""Fused decode + crop + resize: the expensive step knows what the next one needs.

``RandomResizedCropDecode`` draws the crop first — from the JPEG header's size, with
torchvision's own parameter sampler and the same random draws as
``v2.RandomResizedCrop`` followed by ``v2.RandomHorizontalFlip`` — then decodes only the
crop's rows and iMCU columns, at the smallest DCT scale (1/2, 1/4, 1/8) that still
leaves at least the output resolution over the crop, resizes with antialiasing in
``uint8`` and flips. Formats other than RGB-convertible JPEG take the unfused path:
full decode with the chosen decoder, then the same crop, resize and flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from . import decoders


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _shape_only(height: int, width: int) -> torch.Tensor:
    """A (3, height, width) tensor that owns one element: for size-only parameter samplers."""
    return torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, height, width)


class _FusedDecode:
    def __init__(self, size: int | Sequence[int], decoder: str) -> None:
        self.size = _pair(size)
        if decoder not in ("fastload", "auto"):
            decoders.resolve(decoder)  # validates the name
        self.decoder = "fastload" if decoder == "auto" and decoders.available("fastload") else decoder

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _flip(self) -> bool:
        return False

    def __call__(self, data: bytes) -> torch.Tensor:
        """Encoded image → ``uint8`` tensor ``(3, *size)``. Raises ``ImageDecodeError``."""
        out_h, out_w = self.size
        if self.decoder == "fastload" and decoders.is_jpeg(data):
            from fastload import _ext

            try:
                width, height, _, rgb = _ext.jpeg_header(data)
                if rgb:
                    top, left, h, w = self._crop_box(height, width)
                    band, start, crop_w, _ = _ext.decode_jpeg_region(data, left, top, w, h, out_w, out_h)
                    # (1, 3, h', w') channels-last view of the band: the uint8 resize fast path.
                    crop = torch.from_numpy(band[:, start : start + crop_w]).permute(2, 0, 1)
                    return self._finish(F.resize(crop, [out_h, out_w], antialias=True))
            except ValueError as exc:
                raise decoders.ImageDecodeError(f"cannot decode JPEG ({len(data)} bytes): {exc}") from exc
        image = decoders.decode(data, "pillow" if self.decoder == "fastload" else self.decoder)
        top, left, h, w = self._crop_box(image.shape[1], image.shape[2])
        return self._finish(F.resized_crop(image, top, left, h, w, [out_h, out_w], antialias=True))

    def _finish(self, image: torch.Tensor) -> torch.Tensor:
        if self._flip():
            image = image.flip(-1)
        return image.contiguous()


class RandomResizedCropDecode(_FusedDecode):
    """``v2.RandomResizedCrop(size, scale, ratio, antialias=True)`` + ``v2.RandomHorizontalFlip(hflip_p)``
    on encoded bytes, decoding only what the crop needs.

    Randomness comes from torch's global generator exactly as in that torchvision
    pipeline, so the same seed gives the same crops and flips (and ``seed_per_sample``
    makes them independent of worker count).

    Args:
        size: output ``(height, width)`` or one int for a square.
        scale, ratio: as in ``RandomResizedCrop``.
        hflip_p: probability of a horizontal flip (0 disables it and its random draw).
        decoder: ``"fastload"`` / ``"auto"`` (region decoding) or a full decoder name from
            :mod:`fastload.image.decoders` for the unfused path.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        *,
        decoder: str = "auto",
    ) -> None:
        super().__init__(size, decoder)
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be in [0, 1], got {hflip_p}")
        self._sampler = v2.RandomResizedCrop(self.size, scale=scale, ratio=ratio, antialias=True)
        self.hflip_p = hflip_p

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        params = self._sampler.make_params([_shape_only(height, width)])
        return params["top"], params["left"], params["height"], params["width"]

    def _flip(self) -> bool:
        return self.hflip_p > 0 and bool(torch.rand(1) < self.hflip_p)

    def __repr__(self) -> str:
        return (f"RandomResizedCropDecode(size={self.size}, scale={self._sampler.scale}, "
                f"ratio={self._sampler.ratio}, hflip_p={self.hflip_p}, decoder={self.decoder!r})")


class ResizeCenterCropDecode(_FusedDecode):
    """The validation transform ``v2.Resize(resize_size)`` + ``v2.CenterCrop(size)`` on encoded
    bytes: decodes only the central region, at the smallest sufficient DCT scale.

    Args:
        size: output ``(height, width)`` or one int.
        resize_size: the shorter side the image would be resized to before cropping
            (default: ``size`` × 256 / 224, the ImageNet convention).
    """

    def __init__(self, size: int | Sequence[int], resize_size: int | None = None, *, decoder: str = "auto") -> None:
        super().__init__(size, decoder)
        self.resize_size = resize_size or int(round(min(self.size) * 256 / 224))

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        factor = self.resize_size / min(height, width)
        h = min(height, max(1, int(round(self.size[0] / factor))))
        w = min(width, max(1, int(round(self.size[1] / factor))))
        return int(round((height - h) / 2.0)), int(round((width - w) / 2.0)), h, w

    def __repr__(self) -> str:
        return f"ResizeCenterCropDecode(size={self.size}, resize_size={self.resize_size}, decoder={self.decoder!r})"


__all__ = ["RandomResizedCropDecode", "ResizeCenterCropDecode"]
