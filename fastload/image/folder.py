"""``ImageFolder``: torchvision's class/label semantics, with the file list in flat arrays."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .. import telemetry
from .decoders import ImageDecodeError


class ImageFolder(Dataset):
    """``root/<class>/<image>`` → ``(image, class index)``, like ``torchvision.datasets.ImageFolder``.

    Classes and samples are found by torchvision's own ``find_classes``/``make_dataset``
    (sorted class folders, sorted files, same extensions), so ``classes``,
    ``class_to_idx``, ``samples`` and ``targets`` are equal to torchvision's. The file
    list is then kept as one byte array of paths plus offsets and an int64 target array:
    no per-sample Python objects for forked workers to copy-on-read.

    ``transform`` receives the file's encoded bytes: give it a fused transform
    (:class:`RandomResizedCropDecode`, :class:`ResizeCenterCropDecode`) or any callable
    on bytes. Without one, samples are ``(bytes, target)``.

    Raises:
        FileNotFoundError: no class folder or no image under ``root``.
        ImageDecodeError: (from ``__getitem__``) a file that cannot be read or decoded;
            the message names the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[bytes], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        *,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
    ) -> None:
        self.root = os.fspath(root)
        self.classes, self.class_to_idx = find_classes(self.root)
        samples = make_dataset(self.root, self.class_to_idx, extensions=extensions)
        encoded = [os.fsencode(path) for path, _ in samples]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in encoded], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._targets = np.fromiter((t for _, t in samples), dtype=np.int64, count=len(samples))
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self._targets)

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[self._offsets[index] : self._offsets[index + 1]].tobytes())

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``[(path, class index), ...]`` as torchvision has it (built on demand)."""
        return [(self.path(i), int(t)) for i, t in enumerate(self._targets)]

    @property
    def imgs(self) -> list[tuple[str, int]]:
        return self.samples

    @property
    def targets(self) -> list[int]:
        return self._targets.tolist()

    def read(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``."""
        path = self.path(index)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ImageDecodeError(f"{path}: cannot read: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ImageFolder index {index} out of range for {len(self)} images")
        index %= len(self)
        with telemetry.stage("read"):
            data = self.read(index)
        target: Any = int(self._targets[index])
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.transform is None:
            return data, target
        try:
            with telemetry.stage("decode"):  # the transform decodes: the crop-decode transforms
                return self.transform(data), target
        except Exception as exc:
            raise ImageDecodeError(f"{self.path(index)}: {exc}") from exc
