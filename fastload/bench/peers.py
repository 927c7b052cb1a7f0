"""The image scenario's peers, FFCV and SPDL: timed beside torch and fastload when installed.

``make peers`` installs both (FFCV builds from its sdist; see the Makefile for the system
libraries each needs). Each peer does the others' work — every image of the folder once
per epoch in a random order, the last batch kept, ``RandomResizedCrop(224)`` with
torchvision's scale and ratio ranges, a horizontal flip with p = 0.5, ``uint8`` batches of
``(N, 3, 224, 224)`` and int64 labels — with as many worker threads or processes as the
others have workers, and otherwise its own recommended recipe. What still differs is
printed under the table (:data:`FAIRNESS`), because a throughput number means little
without it.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torchvision import transforms as v1

from fastload.bench.scenarios import time_run
from fastload.image import ImageFolder

#: what each loader does differently, printed under the image table when a peer ran
FAIRNESS = (
    "storage: torch, fastload, DALI and SPDL read the JPEG files; FFCV reads one .beton file "
    "(memory-mapped, os_cache=True) written beforehand, in which OpenCV re-encoded every image "
    "(its 'jpg' mode; quality and bytes per pixel printed above; the conversion is not timed)",
    "decode: fastload decodes only the crop's rows and iMCU columns, at the smallest DCT scale "
    "that keeps 224 px over the crop, with libjpeg's accurate integer IDCT; torch (Pillow) and DALI "
    "decode whole images; FFCV decodes whole images with libjpeg-turbo's fast, less accurate IDCT "
    "(TJFLAG_FASTDCT); SPDL decodes whole images with FFmpeg's JPEG decoder",
    "resize: torch and fastload use torchvision's antialiased bilinear resize, FFCV OpenCV's "
    "INTER_AREA, SPDL FFmpeg's swscale bilinear, DALI its own linear resize with antialiasing",
    "layout: FFCV and SPDL yield NCHW views of channels-last memory; torch, fastload and DALI "
    "contiguous NCHW",
    "warm-up: every loader's first epoch is untimed; FFCV's compiles its pipeline with numba "
    "(its time is printed above)",
)

#: pip's names and the versions the bench was tried with (installed by ``make peers``)
PACKAGES = {"ffcv": "ffcv==1.0.2", "spdl": "spdl==0.8.0"}


def _probe_ffcv() -> None:
    import ffcv.fields.rgb_image  # noqa: F401  (loads FFCV's extension: OpenCV, libturbojpeg)
    import ffcv.loader  # noqa: F401  (numba)


def _probe_spdl() -> None:
    import spdl.io
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, format="JPEG")
    spdl.io.decode_packets(spdl.io.demux_image(jpeg.getvalue()))  # loads FFmpeg's libraries


_PROBES = {"ffcv": _probe_ffcv, "spdl": _probe_spdl}


def unavailable(peer: str) -> str | None:
    """Why ``peer`` (``"ffcv"`` or ``"spdl"``) cannot run here, or None when it can: its
    import, and for SPDL the loading of FFmpeg's libraries, is tried."""
    try:
        _PROBES[peer]()
    except Exception as exc:  # a broken install fails with anything, e.g. OSError for a missing .so
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


class _DecodedImages:
    """An ImageFolder as FFCV's writer takes it: ``(HWC uint8 array, label)`` per index."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder, self.targets = folder, folder.targets

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        with Image.open(io.BytesIO(self.folder.read(index))) as image:
            return np.asarray(image.convert("RGB")), self.targets[index]


class FfcvImageLoader:
    """FFCV 1.0's ImageNet recipe on an image folder.

    The folder is converted once into a ``.beton`` at ``path`` (``RGBImageField`` in
    ``'jpg'`` mode, which decodes every image and re-encodes it with OpenCV at ``quality``;
    ``max_resolution`` above the longest side keeps the size). Iterating is one epoch of
    ``ffcv.loader.Loader`` in random order with ``RandomResizedCropRGBImageDecoder`` and
    ``RandomHorizontalFlip``, with ``workers`` threads.
    """

    def __init__(self, folder: ImageFolder, path: str, batch_size: int, workers: int, *, size: int = 224,
                 quality: int = 94, max_resolution: int = 1024, seed: int = 0) -> None:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage
        from ffcv.writer import DatasetWriter

        self.quality = quality
        start = time.perf_counter()
        fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=quality, max_resolution=max_resolution),
                  "label": IntField()}
        # The writer's progress bars would interleave with the bench's.
        with contextlib.redirect_stderr(io.StringIO()):
            DatasetWriter(path, fields, num_workers=workers).from_indexed_dataset(_DecodedImages(folder))
        self.write_seconds = time.perf_counter() - start
        # The stored JPEGs' bytes over their pixels, as jpeg_statistics() gives for the folder
        # (the labels live in the metadata table: every allocation is an image).
        reader = Reader(path)
        pixels = (reader.metadata["f0"]["width"].astype(np.int64) * reader.metadata["f0"]["height"]).sum()
        self.bytes_per_pixel = float(reader.alloc_table["size"].sum()) / float(pixels)
        self.loader = Loader(
            path, batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM, os_cache=True,
            drop_last=False, seed=seed,
            pipelines={"image": [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(),
                                 ToTensor(), ToTorchImage()],
                       "label": [IntDecoder(), ToTensor(), Squeeze()]},
        )
        #: seconds of the first epoch (numba compiles the pipeline), None before it ran
        self.first_epoch_seconds: float | None = None

    def run(self, batches: int | None) -> tuple[int, float]:
        count, seconds = time_run(self.loader, batches)
        if self.first_epoch_seconds is None:
            self.first_epoch_seconds = seconds
        return count, seconds


def _crop_filter(packets: Any, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> str:
    """FFmpeg's filter graph for one RandomResizedCrop + flip, drawn as torchvision draws them."""
    top, left, height, width = v1.RandomResizedCrop.get_params(
        torch.empty(0, packets.height, packets.width), list(scale), list(ratio))
    flip = ",hflip" if torch.rand(1) < 0.5 else ""
    return f"crop={width}:{height}:{left}:{top},scale={size}:{size}:flags=bilinear{flip},format=rgb24"


class SpdlImageLoader:
    """SPDL 0.8's thread pipeline on an image folder: each of ``workers`` threads demuxes a
    JPEG, draws the crop from its size and decodes it through an FFmpeg filter graph that
    crops, scales and flips; batches are converted to tensors in one more stage. The decode
    stage keeps twice as many tasks in flight as there are threads, so that no thread waits
    for the pipeline's event loop to hand it the next image."""

    def __init__(self, folder: ImageFolder, batch_size: int, workers: int, *, size: int = 224,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> None:
        self.samples = folder.samples
        self.batch_size, self.workers = batch_size, workers
        self.size, self.scale, self.ratio = size, scale, ratio

    def _load(self, index: int) -> tuple[Any, int]:
        import spdl.io

        path, label = self.samples[index]
        packets = spdl.io.demux_image(path)
        return spdl.io.decode_packets(packets, filter_desc=_crop_filter(packets, self.size, self.scale, self.ratio)), label

    @staticmethod
    def _collate(items: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import spdl.io

        frames, labels = zip(*items)
        images = spdl.io.to_torch(spdl.io.convert_frames(list(frames)))  # (N, H, W, C)
        return images.permute(0, 3, 1, 2), torch.tensor(labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from spdl.pipeline import PipelineBuilder

        order = torch.randperm(len(self.samples)).tolist()
        pipeline = (PipelineBuilder().add_source(order)
                    .pipe(self._load, concurrency=2 * self.workers)
                    .aggregate(self.batch_size)
                    .pipe(self._collate)
                    .add_sink(buffer_size=2)
                    .build(num_threads=self.workers))
        with pipeline.auto_stop():
            yield from pipeline.get_iterator()
