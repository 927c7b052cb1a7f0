"""Fused decode + crop + resize: the expensive step knows what the next one needs.

``RandomResizedCropDecode`` draws the crop first — from the JPEG header's size, with
torchvision's own parameter sampler and the same random draws as
``v2.RandomResizedCrop`` followed by ``v2.RandomHorizontalFlip`` — then decodes only the
crop's rows and iMCU columns, at the smallest DCT scale (1/2, 1/4, 1/8) that still
leaves at least the output resolution over the crop, resizes with antialiasing in
``uint8`` and flips. Formats other than RGB-convertible JPEG take the unfused path:
full decode with the chosen decoder, then the same crop, resize and flip.

Corrupt data raises ``ImageDecodeError`` as with the ``fastload`` decoder in the rows
decoded (down to the crop's last one); below the crop, which is not decoded, the bytes
must still end with the EOI marker and hold no stray marker: a truncated file, or random
garbage, fails whichever crop is drawn. Garbage below the crop that holds no 0xFF byte
goes unseen. The header's size is checked against ``decoders.MAX_IMAGE_PIXELS`` before
anything else.

NOTE [ GPU decode ]

With ``device="cuda"`` (and CUDA usable) a worker only reads the JPEG header and draws
the crop and flip: it returns an :class:`EncodedCrop` (the file's bytes, the box, the
flip). Those are collated as a list (``fastload.collate.Deferred``) and
``finish_batch`` — given to the loader as ``batch_transform`` — decodes the whole batch
in the main process with one batched nvJPEG call (``torchvision.io.decode_jpeg(...,
device="cuda")``), then crops, resizes and flips on the GPU. Data nvJPEG cannot take
(non-JPEG, CMYK) is finished on the CPU in the worker and only copied. Without CUDA the
transform says so once and runs the CPU path; ``finish_batch`` then has nothing to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..collate import Deferred
from ..extension import extension
from ..device import cuda_usable
from . import decoders


@dataclass
class EncodedCrop(Deferred):
    """A sample whose decode is left to the GPU. See NOTE [ GPU decode ]."""

    #: the JPEG file's bytes (uint8, 1-D), or None when ``image`` is already finished
    data: torch.Tensor | None
    #: (top, left, height, width) in the full-size image
    box: tuple[int, int, int, int]
    flip: bool
    image: torch.Tensor | None = None


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _shape_only(height: int, width: int) -> torch.Tensor:
    """A (3, height, width) tensor that owns one element: for size-only parameter samplers."""
    return torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, height, width)


def _rgb_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG libjpeg can decode to RGB; None for other data. Raises
    ``ImageDecodeError`` for a bad header or one over ``decoders.MAX_IMAGE_PIXELS``."""
    if not decoders.is_jpeg(data):
        return None
    width, height, rgb = decoders.jpeg_header(data)
    return (width, height) if rgb else None


class _FusedDecode:
    def __init__(self, size: int | Sequence[int], decoder: str, device: str | torch.device) -> None:
        self.size = _pair(size)
        if decoder not in ("fastload", "auto"):
            decoders.resolve(decoder)  # validates the name
        self.decoder = "fastload" if decoder == "auto" and decoders.available("fastload") else decoder
        self.device = torch.device(device)
        self.gpu_decode = self.device.type == "cuda" and cuda_usable()
        if self.device.type == "cuda" and not self.gpu_decode:
            warnings.warn(f"fastload: {type(self).__name__}(device={str(self.device)!r}): CUDA is not available; "
                          "decoding on the CPU in the workers instead.", stacklevel=3)

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _flip(self) -> bool:
        return False

    def __call__(self, data: bytes) -> torch.Tensor | EncodedCrop:
        """Encoded image → ``uint8`` tensor ``(3, *size)`` (an :class:`EncodedCrop` when the
        GPU decodes). Raises ``ImageDecodeError``."""
        if self.gpu_decode:
            return self._encoded(data)
        return self._decode_on_cpu(data)

    def _encoded(self, data: bytes) -> EncodedCrop:
        size = _rgb_jpeg_size(data)
        if size is None:
            return EncodedCrop(None, (0, 0, 0, 0), False, image=self._decode_on_cpu(data))
        box = self._crop_box(size[1], size[0])
        return EncodedCrop(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, self._flip())

    def finish_batch(self, batch: Any) -> Any:
        """Main process: replace every list of :class:`EncodedCrop` in ``batch`` (a collated
        batch of any structure) by the decoded ``uint8 (N, 3, *size)`` tensor on ``device``."""
        if isinstance(batch, list) and batch and all(isinstance(x, EncodedCrop) for x in batch):
            return self._decode_on_gpu(batch)
        if isinstance(batch, dict):
            return {k: self.finish_batch(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
            return type(batch)(self.finish_batch(v) for v in batch)
        return batch

    def _decode_on_gpu(self, crops: list[EncodedCrop]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        out_h, out_w = self.size
        out = torch.empty((len(crops), 3, out_h, out_w), dtype=torch.uint8, device=self.device)
        pending = [i for i, crop in enumerate(crops) if crop.image is None]
        if pending:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image I/O in favour of TorchCodec
                images = decode_jpeg([crops[i].data for i in pending], mode=ImageReadMode.RGB, device=self.device)
            for i, image in zip(pending, images):
                top, left, h, w = crops[i].box
                resized = F.resized_crop(image, top, left, h, w, [out_h, out_w], antialias=True)
                out[i] = resized.flip(-1) if crops[i].flip else resized
        for i, crop in enumerate(crops):
            if crop.image is not None:
                out[i] = crop.image.to(self.device, non_blocking=True)
        return out

    def _decode_on_cpu(self, data: bytes) -> torch.Tensor:
        out_h, out_w = self.size
        size = _rgb_jpeg_size(data) if self.decoder == "fastload" else None
        if size is not None:
            region = extension("the fused crop decode (decoder='fastload')").decode_jpeg_region
            top, left, h, w = self._crop_box(size[1], size[0])
            try:
                band, start, crop_w, _ = region(data, left, top, w, h, out_w, out_h)
            except ValueError as exc:
                raise decoders.ImageDecodeError(f"cannot decode JPEG ({len(data)} bytes): {exc}") from exc
            # (3, h', w') channels-last view of the band: the uint8 resize fast path.
            crop = torch.from_numpy(band[:, start : start + crop_w]).permute(2, 0, 1)
            return self._finish(F.resize(crop, [out_h, out_w], antialias=True))
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
        device: ``"cuda"`` to decode on the GPU in the main process (NOTE [ GPU decode ]);
            pass ``batch_transform=transform.finish_batch`` to the loader.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        *,
        decoder: str = "auto",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(size, decoder, device)
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
                f"ratio={self._sampler.ratio}, hflip_p={self.hflip_p}, decoder={self.decoder!r}, "
                f"device={str(self.device)!r})")


class ResizeCenterCropDecode(_FusedDecode):
    """The validation transform ``v2.Resize(resize_size)`` + ``v2.CenterCrop(size)`` on encoded
    bytes: decodes only the central region, at the smallest sufficient DCT scale.

    Args:
        size: output ``(height, width)`` or one int.
        resize_size: the shorter side the image would be resized to before cropping
            (default: ``size`` × 256 / 224, the ImageNet convention).
    """

    def __init__(self, size: int | Sequence[int], resize_size: int | None = None, *, decoder: str = "auto",
                 device: str | torch.device = "cpu") -> None:
        super().__init__(size, decoder, device)
        self.resize_size = resize_size or int(round(min(self.size) * 256 / 224))

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        factor = self.resize_size / min(height, width)
        h = min(height, max(1, int(round(self.size[0] / factor))))
        w = min(width, max(1, int(round(self.size[1] / factor))))
        return int(round((height - h) / 2.0)), int(round((width - w) / 2.0)), h, w

    def __repr__(self) -> str:
        return (f"ResizeCenterCropDecode(size={self.size}, resize_size={self.resize_size}, decoder={self.decoder!r}, "
                f"device={str(self.device)!r})")


__all__ = ["EncodedCrop", "RandomResizedCropDecode", "ResizeCenterCropDecode"]
