"""The image scenario's peers, FFCV and SPDL: timed beside torch and fastload when installed.

``make peers`` installs both (FFCV builds from its sdist; see the Makefile for the system
libraries each needs). Each peer does the others' work — every image of the folder once
per epoch in a random order, the last batch kept, ``RandomResizedCrop(224)`` with
torchvision's scale and ratio ranges, a horizontal flip with p = 0.5, ``uint8`` batches of
``(N, 3, 224, 224)`` and int64 labels — with as many threads as the others have workers
(at least one; FFCV at most the CPU count, numba's limit), and otherwise its own
recommended recipe. What still differs is printed under the table (:data:`FAIRNESS`),
because a throughput number means little without it. ``python -m fastload.bench.peers``
says whether each peer can run here.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torchvision import transforms as v1

from fastload.bench.timing import time_run
from fastload.image import ImageFolder

#: what each loader does differently, printed under the image table when a peer ran
FAIRNESS = (
    "storage: torch, fastload, DALI and SPDL read the JPEG files; FFCV reads one .beton file "
    "(memory-mapped, os_cache=True) written beforehand, in which OpenCV re-encoded every image at "
    "full size (quality and bytes per pixel printed above; the conversion is not timed)",
    "decode: fastload decodes only the crop's rows and iMCU columns, at the smallest DCT scale "
    "(1/2, 1/4, 1/8) that keeps 224 px over the crop, with libjpeg's accurate integer IDCT; DALI "
    "decodes the crop's region too (fn.decoders.image_random_crop), accurate IDCT, with simple "
    "rather than fancy chroma upsampling (its default); torch (Pillow) decodes whole images; FFCV "
    "decodes whole images with libjpeg-turbo's fast, less accurate IDCT (TJFLAG_FASTDCT); SPDL "
    "decodes whole images with FFmpeg's JPEG decoder",
    "resize: torch resizes with Pillow's antialiased bilinear filter (Pillow-SIMD's where active), "
    "fastload with torchvision's antialiased bilinear tensor resize, FFCV with OpenCV's INTER_AREA, "
    "SPDL with swscale's bilinear on the YUV 4:2:0 planes before the RGB conversion (FFmpeg's crop "
    "rounds x and y down to even numbers there), DALI with its antialiased linear resize",
    "layout: FFCV and SPDL yield NCHW views of channels-last memory; torch, fastload and DALI "
    "contiguous NCHW",
    "warm-up: every loader's first run is untimed; FFCV's compiles its pipeline with numba "
    "(its time is printed above)",
)


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
    """An ImageFolder as FFCV's writer takes it: ``(HWC uint8 array, label)`` per index.

    The writer's worker processes give up silently on an exception, and the writer then
    waits for them forever. So an image that cannot be read is stored as one black pixel
    and its error is appended to ``failures`` (a file, shared by the workers), which the
    caller checks after writing."""

    def __init__(self, folder: ImageFolder, failures: str) -> None:
        self.folder, self.targets, self.failures = folder, folder.targets, failures

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from fastload.image import decoders

        try:
            image = decoders.decode(self.folder.read(index), "pillow")  # (3, H, W), size-checked
            return np.ascontiguousarray(image.permute(1, 2, 0).numpy()), self.targets[index]
        except Exception as exc:  # ImageDecodeError, or anything else a bad file raises
            with open(self.failures, "a") as f:
                f.write(f"{self.folder.path(index)}: {type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
            return np.zeros((1, 1, 3), dtype=np.uint8), self.targets[index]


class FfcvImageLoader:
    """FFCV 1.0 on an image folder: its ``Loader`` with ``RandomResizedCropRGBImageDecoder``
    and ``RandomHorizontalFlip``, in random order, the last batch kept.

    The folder is converted once into a ``.beton`` at ``path``: ``RGBImageField`` in
    ``'jpg'`` mode, which decodes every image and re-encodes it with OpenCV at ``quality``,
    at full size (no ``max_resolution``). Storing every image as a JPEG at the photos' own
    size and about their quality is this bench's choice, so that FFCV decodes what the
    others decode. FFCV sets numba's and torch's thread counts to its ``num_workers``; this
    class restores torch's after each call, so that the other contenders keep theirs.

    Raises:
        RuntimeError: an image of the folder could not be read or decoded (named).
    """

    def __init__(self, folder: ImageFolder, path: str, batch_size: int, threads: int, *, size: int = 224,
                 quality: int = 94, seed: int = 0) -> None:
        import numba
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage
        from ffcv.writer import DatasetWriter

        #: numba refuses more threads than its limit (the CPU count)
        self.threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        self.quality = quality
        start = time.perf_counter()
        fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=quality), "label": IntField()}
        failures = path + ".failures"
        open(failures, "w").close()
        try:
            # The writer's progress bars would interleave with the bench's.
            with self._torch_threads_kept(), contextlib.redirect_stderr(io.StringIO()):
                writer = DatasetWriter(path, fields, num_workers=self.threads)
                writer.from_indexed_dataset(_DecodedImages(folder, failures))
            with open(failures) as f:
                failed = f.read().splitlines()
        finally:
            os.remove(failures)
        if failed:
            os.remove(path)
            raise RuntimeError(f"FFCV's conversion of {folder.root}: {len(failed)} image(s) could not be read: "
                               + "; ".join(failed[:3]))
        self.write_seconds = time.perf_counter() - start
        # The stored JPEGs' bytes over their pixels, as jpeg_statistics() gives for the folder
        # (the labels live in the metadata table: every allocation is an image).
        reader = Reader(path)
        pixels = (reader.metadata["f0"]["width"].astype(np.int64) * reader.metadata["f0"]["height"]).sum()
        self.bytes_per_pixel = float(reader.alloc_table["size"].sum()) / float(pixels)
        with self._torch_threads_kept():
            self.loader = Loader(
                path, batch_size=batch_size, num_workers=self.threads, order=OrderOption.RANDOM, os_cache=True,
                drop_last=False, seed=seed,
                pipelines={"image": [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(),
                                     ToTensor(), ToTorchImage()],
                           "label": [IntDecoder(), ToTensor(), Squeeze()]},
            )
        #: seconds of the first run (numba compiles the pipeline), None before it ran
        self.first_run_seconds: float | None = None

    @staticmethod
    @contextlib.contextmanager
    def _torch_threads_kept() -> Iterator[None]:
        threads = torch.get_num_threads()
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _epoch(self) -> Iterator[Any]:
        # An epoch left early (--batches) must stop FFCV's reading thread, which only its
        # iterator's close() does (a running thread is never garbage): closing this
        # generator, as time_run's caller does by dropping it, closes the iterator it
        # delegates to.
        yield from self.loader

    def run(self, batches: int | None) -> tuple[int, float]:
        with self._torch_threads_kept():
            count, seconds = time_run(self._epoch(), batches)
        if self.first_run_seconds is None:
            self.first_run_seconds = seconds
        return count, seconds


def _crop_filter(packets: Any, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> str:
    """FFmpeg's filter graph for one RandomResizedCrop + flip, drawn as torchvision draws them."""
    top, left, height, width = v1.RandomResizedCrop.get_params(
        torch.empty(0, packets.height, packets.width), list(scale), list(ratio))
    flip = ",hflip" if torch.rand(1) < 0.5 else ""
    return f"crop={width}:{height}:{left}:{top},scale={size}:{size}:flags=bilinear{flip},format=rgb24"


class SpdlImageLoader:
    """SPDL 0.8's thread pipeline on an image folder: each of ``threads`` threads demuxes a
    JPEG, draws the crop from its size and decodes it through an FFmpeg filter graph that
    crops, scales and flips; batches are converted to tensors in one more stage. The decode
    stage keeps twice as many tasks in flight as there are threads, so that no thread waits
    for the pipeline's event loop to hand it the next image. An image that fails ends the
    epoch with SPDL's error (its default would skip it, and shorten the epoch unseen)."""

    def __init__(self, folder: ImageFolder, batch_size: int, threads: int, *, size: int = 224,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> None:
        self.samples = folder.samples
        self.batch_size, self.threads = batch_size, threads
        self.size, self.scale, self.ratio = size, scale, ratio

    def _load(self, index: int) -> tuple[Any, int]:
        import spdl.io

        path, label = self.samples[index]
        try:
            packets = spdl.io.demux_image(path)
            return spdl.io.decode_packets(packets, filter_desc=_crop_filter(packets, self.size, self.scale, self.ratio)), label
        except Exception as exc:
            raise _ImageFailed(f"SPDL could not load {path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _collate(items: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import spdl.io

        frames, labels = zip(*items)
        images = spdl.io.to_torch(spdl.io.convert_frames(list(frames)))  # (N, H, W, C)
        return images.permute(0, 3, 1, 2), torch.tensor(labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from spdl.pipeline import PipelineBuilder, PipelineFailure

        order = torch.randperm(len(self.samples)).tolist()
        pipeline = (PipelineBuilder().add_source(order)
                    .pipe(self._load, concurrency=2 * self.threads)
                    .aggregate(self.batch_size)
                    .pipe(self._collate)
                    .add_sink(buffer_size=2)
                    .build(num_threads=self.threads, max_failures=0))
        try:
            with pipeline.auto_stop():
                yield from pipeline.get_iterator()
        except PipelineFailure as failure:
            # SPDL raises a group of "stage failed" errors; the image is in their causes.
            for error in failure.exceptions:
                while error is not None and not isinstance(error, _ImageFailed):
                    error = error.__cause__
                if error is not None:
                    raise RuntimeError(str(error)) from failure
            raise


class _ImageFailed(RuntimeError):
    """An image SPDL could not load; the message names its file."""


def main() -> int:
    """``python -m fastload.bench.peers``: one line per peer, "ready" or why it cannot run;
    exit status 1 when one cannot."""
    reasons = {peer: unavailable(peer) for peer in _PROBES}
    for peer, reason in reasons.items():
        print(f"{peer}: {reason or 'ready'}")
    return int(any(reason is not None for reason in reasons.values()))


if __name__ == "__main__":
    sys.exit(main())
