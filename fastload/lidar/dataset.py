"""``LidarDataset``: a folder of scans (+ optional boxes), augmented and voxelized in the worker.

A sample is a dict: ``points`` ``(N, C)`` float32 (or, with a ``voxelizer``, ``voxels``,
``coords``, ``num_points`` instead), ``gt_boxes`` ``(K, 7+)`` (x, y, z, dx, dy, dz,
heading, ...) when labels are given, and ``frame_id``. Batch it with
``fastload.VoxelCollator``. Augmentations draw from torch's global generator, so
``DataLoader(seed_per_sample=True)`` makes them independent of the worker count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import telemetry
from .io import PointCloudError, read_point_cloud

Sample = dict[str, Any]
SCAN_EXTENSIONS = (".bin", ".pcd", ".ply")


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class RangeCrop:
    """Keep points inside ``(x_min, y_min, z_min, x_max, y_max, z_max)``, and boxes whose centre is."""

    def __init__(self, point_cloud_range: Sequence[float]) -> None:
        self.low = np.asarray(point_cloud_range[:3], np.float32)
        self.high = np.asarray(point_cloud_range[3:], np.float32)

    def __call__(self, sample: Sample) -> Sample:
        for key in ("points", "gt_boxes"):
            if key in sample:
                xyz = sample[key][:, :3]
                sample[key] = sample[key][np.all((xyz >= self.low) & (xyz < self.high), axis=1)]
        return sample


class ShufflePoints:
    """Permute the points (some voxelizers keep the first points of a voxel: this varies them)."""

    def __call__(self, sample: Sample) -> Sample:
        sample["points"] = sample["points"][torch.randperm(len(sample["points"])).numpy()]
        return sample


class RandomFlip:
    """Mirror across the x axis (y → -y, heading → -heading) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if float(torch.rand(())) < self.p:
            sample["points"] = sample["points"].copy()
            sample["points"][:, 1] *= -1
            if "gt_boxes" in sample:
                boxes = sample["gt_boxes"].copy()
                boxes[:, 1] *= -1
                boxes[:, 6] *= -1
                sample["gt_boxes"] = boxes
        return sample


class RandomRotation:
    """Rotate about z by an angle uniform in ``[-max_angle, max_angle]`` (heading follows)."""

    def __init__(self, max_angle: float = math.pi / 4) -> None:
        self.max_angle = max_angle

    def __call__(self, sample: Sample) -> Sample:
        angle = _uniform(-self.max_angle, self.max_angle)
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, s], [-s, c]], np.float32)  # row vectors: [x y] @ R rotates by +angle
        sample["points"] = sample["points"].copy()
        sample["points"][:, :2] = sample["points"][:, :2] @ rotation
        if "gt_boxes" in sample:
            boxes = sample["gt_boxes"].copy()
            boxes[:, :2] = boxes[:, :2] @ rotation
            boxes[:, 6] += angle
            sample["gt_boxes"] = boxes
        return sample


class RandomScaling:
    """Scale coordinates (and box sizes) by a factor uniform in ``scale_range``."""

    def __init__(self, scale_range: tuple[float, float] = (0.95, 1.05)) -> None:
        self.scale_range = scale_range

    def __call__(self, sample: Sample) -> Sample:
        factor = _uniform(*self.scale_range)
        sample["points"] = sample["points"].copy()
        sample["points"][:, :3] *= factor
        if "gt_boxes" in sample:
            boxes = sample["gt_boxes"].copy()
            boxes[:, :6] *= factor
            sample["gt_boxes"] = boxes
        return sample


class LidarDataset(Dataset):
    """Scans under ``root`` (``.bin`` KITTI, ``.pcd``, ``.ply``; sorted), with optional boxes
    in ``labels_root/<scan name>.npy`` (``(K, 7+)`` float32).

    Args:
        transforms: applied in order to each sample dict (e.g. :class:`RangeCrop`,
            :class:`ShufflePoints`, :class:`RandomFlip`, :class:`RandomRotation`,
            :class:`RandomScaling`), in the worker.
        voxelizer: a :class:`Voxelizer` (or any callable with its signature, returning
            ``(voxels, coords, num_points)``); if given, the sample carries its voxels
            instead of its points.

    Raises:
        FileNotFoundError: no scan under ``root``, or a missing label file (named).
        PointCloudError: (from ``__getitem__``) an unreadable scan, named.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        labels_root: str | os.PathLike[str] | None = None,
        transforms: Sequence[Callable[[Sample], Sample]] = (),
        voxelizer: Callable[[np.ndarray], tuple[Any, Any, Any]] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        names = sorted(n for n in os.listdir(self.root) if os.path.splitext(n)[1].lower() in SCAN_EXTENSIONS)
        if not names:
            raise FileNotFoundError(f"LidarDataset: no {'/'.join(SCAN_EXTENSIONS)} scans in {self.root}")
        encoded = [n.encode() for n in names]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._names = np.frombuffer(b"".join(encoded), np.uint8)
        self.labels_root = None if labels_root is None else os.fspath(labels_root)
        if self.labels_root is not None:
            missing = [n for n in names if not os.path.exists(self._label_path(n))]
            if missing:
                raise FileNotFoundError(f"LidarDataset: no label file {self._label_path(missing[0])} "
                                        f"(and {len(missing) - 1} more)")
        self.transforms = list(transforms)
        self.voxelizer = voxelizer

    def _label_path(self, name: str) -> str:
        assert self.labels_root is not None
        return os.path.join(self.labels_root, os.path.splitext(name)[0] + ".npy")

    def name(self, index: int) -> str:
        return self._names[self._offsets[index] : self._offsets[index + 1]].tobytes().decode()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> Sample:
        name = self.name(index)
        path = os.path.join(self.root, name)
        with telemetry.stage("read"):
            sample: Sample = {"points": read_point_cloud(path).points, "frame_id": os.path.splitext(name)[0]}
        if self.labels_root is not None:
            boxes = np.load(self._label_path(name)).astype(np.float32)
            if boxes.ndim != 2 or boxes.shape[1] < 7:
                raise PointCloudError(f"{self._label_path(name)}: boxes must be (K, 7+), got {boxes.shape}")
            sample["gt_boxes"] = boxes
        with telemetry.stage("augment"):
            for transform in self.transforms:
                sample = transform(sample)
        if self.voxelizer is not None:
            with telemetry.stage("voxelize"):
                points = np.ascontiguousarray(sample.pop("points"))
                sample["voxels"], sample["coords"], sample["num_points"] = self.voxelizer(points)
        return sample
