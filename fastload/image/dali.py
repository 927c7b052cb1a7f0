"""``DaliImageLoader``: an NVIDIA DALI pipeline behind fastload's loader interface.

The device is explicit, as in DALI: ``device="gpu"`` decodes with nvJPEG
(``fn.decoders.image_random_crop(device="mixed")``) and crops, resizes and flips on the
GPU; ``device="cpu"`` runs the same graph on CPU threads (``device_id=None``, which DALI
needs for an all-CPU pipeline on a machine without CUDA). ``"auto"`` picks the GPU when
DALI sees one and says once why it did not.

DALI reads and decodes the files inside its own graph: fastload's checks do not apply
there (``decoders.MAX_IMAGE_PIXELS``, the corrupt-data rules of ``fastload.image.decoders``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..device import cuda_usable

LAST_BATCH_POLICIES = ("partial", "drop", "fill")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _gpu_count() -> int:
    from nvidia.dali import backend

    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:
        return 0


def _files_and_labels(source: Any) -> tuple[list[str], list[int]]:
    samples = source.samples if hasattr(source, "samples") else source
    files, labels = [], []
    for path, label in samples:
        files.append(os.fspath(path))
        labels.append(int(label))
    if not files:
        raise ValueError("DaliImageLoader: no images")
    return files, labels


def _shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    if num_shards is None:
        num_shards = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if shard_id is None:
        shard_id = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    return shard_id, num_shards


class DaliImageLoader:
    """Decode + random-resized-crop + flip with DALI; batches are ``[images, labels]``:
    ``uint8 (N, 3, size, size)`` and ``int64 (N,)``, as ``fastload.DataLoader`` gives for an
    ``ImageFolder`` with a fused transform.

    Args:
        source: an ``ImageFolder`` (fastload's or torchvision's) or ``[(path, label), ...]``.
        batch_size: images per batch.
        size, scale, ratio, hflip_p: the random-resized-crop and flip parameters.
        num_threads: DALI CPU threads (the equivalent of ``num_workers``).
        device: ``"gpu"``, ``"cpu"`` or ``"auto"``.
        shard_id, num_shards: this rank's shard (default: from torch.distributed).
        shuffle: DALI's reader shuffle (a shuffling buffer, reseeded each epoch).
        seed: the pipeline's seed.
        last_batch: ``"partial"`` (a smaller last batch), ``"drop"``, or ``"fill"`` (padded
            by repeating the shard's last sample).

    Raises:
        ImportError: DALI is not installed (``pip install nvidia-dali-cuda130``).
        ValueError: bad arguments; ``RuntimeError`` from DALI for unreadable files.
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        *,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        num_threads: int = 2,
        device: str = "auto",
        shard_id: int | None = None,
        num_shards: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        last_batch: str = "partial",
    ) -> None:
        if not dali_available():
            raise ImportError("DaliImageLoader needs NVIDIA DALI: pip install nvidia-dali-cuda130")
        if last_batch not in LAST_BATCH_POLICIES:
            raise ValueError(f"last_batch must be one of {LAST_BATCH_POLICIES}, got {last_batch!r}")
        if device not in ("auto", "gpu", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'gpu' or 'cpu', got {device!r}")
        self.files, self.labels = _files_and_labels(source)
        self.batch_size = batch_size
        self.shard_id, self.num_shards = _shard(shard_id, num_shards)
        self.last_batch = last_batch
        self.device = self._choose_device(device)
        self._pipeline = self._build(size, scale, ratio, hflip_p, num_threads, shuffle, seed)
        self._iterator = self._make_iterator()
        self._epoch_open = False  # an iteration was started and not run to its end

    def _choose_device(self, device: str) -> str:
        if device == "cpu":
            return "cpu"
        if cuda_usable() and _gpu_count() > 0:  # torch takes the pipeline's CUDA outputs
            return "gpu"
        if device in ("gpu", "cuda"):
            raise RuntimeError("DaliImageLoader(device='gpu'): DALI sees no CUDA device")
        warnings.warn("fastload: DALI sees no CUDA device; DaliImageLoader runs its CPU pipeline.", stacklevel=3)
        return "cpu"

    def _build(self, size: int, scale: Sequence[float], ratio: Sequence[float], hflip_p: float,
               num_threads: int, shuffle: bool, seed: int) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device == "gpu"

        @pipeline_def
        def crop_flip() -> Any:
            jpegs, labels = fn.readers.file(
                files=self.files, labels=self.labels, shard_id=self.shard_id, num_shards=self.num_shards,
                random_shuffle=shuffle, pad_last_batch=True, name="reader",
            )
            images = fn.decoders.image_random_crop(
                jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                random_area=list(scale), random_aspect_ratio=list(ratio), num_attempts=10,
            )
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            flip = fn.random.coin_flip(probability=hflip_p)
            images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=flip)
            return images, labels

        pipeline = crop_flip(batch_size=self.batch_size, num_threads=num_threads,
                             device_id=torch.cuda.current_device() if gpu else None, seed=seed)
        pipeline.build()
        return pipeline

    def _make_iterator(self) -> Any:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        policy = {"partial": LastBatchPolicy.PARTIAL, "drop": LastBatchPolicy.DROP, "fill": LastBatchPolicy.FILL}
        return DALIGenericIterator([self._pipeline], ["images", "labels"], reader_name="reader",
                                   last_batch_policy=policy[self.last_batch],
                                   auto_reset=True)

    @property
    def shard_size(self) -> int:
        """Samples in this shard (DALI splits [k·N/S, (k+1)·N/S) the same way)."""
        n, s, k = len(self.files), self.num_shards, self.shard_id
        return (k + 1) * n // s - k * n // s

    def __len__(self) -> int:
        if self.last_batch == "drop":
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        """One epoch. DALI cannot reset mid-epoch, so after an early ``break`` the next
        iteration first runs the rest of that epoch and discards it."""
        if self._epoch_open:
            for _ in self._iterator:
                pass
        self._epoch_open = True
        for (outputs,) in self._iterator:
            yield [outputs["images"], outputs["labels"].reshape(-1).to(torch.int64)]
        self._epoch_open = False
