"""The lidar scenario's pieces: baseline voxelizers, the per-scan latency lines and the
single-scan voxelizer table.

Baselines, for a torch ``DataLoader`` to run in its workers: spconv 2.x's CPU
``PointToVoxel`` (the de-facto standard), or where spconv is not installed a vectorized
numpy voxelizer (what a numpy user would write: ``np.unique`` and a stable sort). Both
give the same voxels as fastload's (tested), so the loaders do the same work.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastload.collate import VoxelCollator
from fastload.device import cuda_usable
from fastload.lidar import (VOXELIZER_PRESETS, LidarDataset, RandomFlip, RandomRotation, RandomScaling, ShufflePoints,
                            Voxelizer)
from fastload.prefetch import map_tensors

#: the report's name of each preset: its configuration, as Voxelizer takes it
CONFIGS = {label: VOXELIZER_PRESETS[preset] for preset, label in (
    ("pointpillars_kitti", "PointPillars (KITTI)"), ("second_kitti", "SECOND (KITTI)"),
    ("centerpoint_nuscenes", "CenterPoint (nuScenes)"))}


def spconv_available() -> bool:
    return importlib.util.find_spec("spconv") is not None


class SpconvVoxelizer:
    """spconv's CPU ``PointToVoxel`` behind fastload's ``Voxelizer`` call signature, built
    in the process that first calls it (so it can be sent to spawned workers)."""

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], max_points_per_voxel: int,
                 max_voxels: int) -> None:
        self.config = (list(voxel_size), list(point_cloud_range), max_points_per_voxel, max_voxels)
        self._impl: Any = None

    def __call__(self, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._impl is None:
            from spconv.pytorch.utils import PointToVoxel

            voxel_size, pc_range, max_points, max_voxels = self.config
            self._impl = PointToVoxel(vsize_xyz=voxel_size, coors_range_xyz=pc_range, num_point_features=points.shape[1],
                                      max_num_voxels=max_voxels, max_num_points_per_voxel=max_points,
                                      device=torch.device("cpu"))
        return self._impl(torch.from_numpy(points))

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_impl": None}


class NumpyVoxelizer:
    """Hard voxelization in vectorized numpy, fastload's rules (see fastload_ext/voxelize.cpp)."""

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], max_points_per_voxel: int,
                 max_voxels: int) -> None:
        self.size = np.asarray(voxel_size, np.float32)
        self.low = np.asarray(point_cloud_range[:3], np.float32)
        self.grid = np.round((np.asarray(point_cloud_range[3:], np.float32) - self.low) / self.size).astype(np.int64)
        self.max_points, self.max_voxels = max_points_per_voxel, max_voxels

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", over="ignore"):
            q = (points[:, :3] - self.low.astype(points.dtype)) / self.size.astype(points.dtype)
            inside = np.flatnonzero(np.all((q >= 0) & (q < self.grid), axis=1))
        xyz = q[inside].astype(np.int64)
        keys = (xyz[:, 2] * self.grid[1] + xyz[:, 1]) * self.grid[0] + xyz[:, 0]
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        number = np.empty(len(unique), np.int64)
        number[np.argsort(first, kind="stable")] = np.arange(len(unique))  # by first arrival
        voxel = number[inverse.reshape(-1)]
        order = np.argsort(voxel, kind="stable")  # grouped by voxel, input order within
        starts = np.searchsorted(voxel[order], np.arange(len(unique)))
        row = np.empty(len(voxel), np.int64)
        row[order] = np.arange(len(voxel)) - starts[voxel[order]]
        keep = (voxel < self.max_voxels) & (row < self.max_points)
        m = min(len(unique), self.max_voxels)
        voxels = np.zeros((m, self.max_points, points.shape[1]), points.dtype)
        voxels[voxel[keep], row[keep]] = points[inside[keep]]
        opened = np.argsort(first, kind="stable")[:m]
        coords = xyz[first[opened]][:, ::-1].astype(np.int32)
        counts = np.minimum(np.bincount(voxel[voxel < m], minlength=m), self.max_points).astype(np.int32)
        return voxels, coords, counts


#: a real-time lidar stack's budget for one scan (a 10 Hz sensor gives one scan each 100 ms)
LATENCY_TARGET_MS = 100.0


def augmentations() -> list[Callable[[dict[str, Any]], dict[str, Any]]]:
    """The training augmentations of the latency lines (OpenPCDet's usual global ones)."""
    return [RandomFlip(), RandomRotation(), RandomScaling(), ShufflePoints()]


def latency_lines(root: str | os.PathLike[str], rounds: int) -> list[str]:
    """Lines of per-scan latency: read + augment + voxelize (PointPillars) + collate, and
    the copy to the GPU where there is one, one scan at a time on one thread, for fastload
    and the baseline voxelizer on the same scans with the same augmentation draws
    (alternating scan by scan). p50 / p99 / max over ``rounds`` passes, against
    :data:`LATENCY_TARGET_MS`."""
    config = CONFIGS["PointPillars (KITTI)"]
    baseline_name, baseline = (("spconv", SpconvVoxelizer(*config)) if spconv_available()
                               else ("numpy", NumpyVoxelizer(*config)))
    datasets = {"fastload": LidarDataset(root, transforms=augmentations(), voxelizer=Voxelizer(*config)),
                baseline_name: LidarDataset(root, transforms=augmentations(), voxelizer=baseline)}
    collate = VoxelCollator()
    device = torch.device("cuda") if cuda_usable() else None
    times: dict[str, list[float]] = {name: [] for name in datasets}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for round_ in range(rounds + 1):  # the first pass warms the caches and is not counted
            for index in range(len(datasets["fastload"])):
                for name, dataset in datasets.items():
                    torch.manual_seed(index)
                    start = time.perf_counter()
                    batch = collate([dataset[index]])
                    if device is not None:
                        batch = map_tensors(batch, lambda t: t.to(device))
                        torch.cuda.synchronize(device)
                    if round_:
                        times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    stages = "read + augment + voxelize + collate" + (" + copy to the GPU" if device is not None else "")
    lines = [f"lidar: per-scan latency ({stages}; PointPillars; one thread), ms p50 / p99 / max over "
             f"{len(times['fastload'])} scans, against the {LATENCY_TARGET_MS:.0f} ms real-time budget:"]
    for name, values in times.items():
        p50, p99 = _percentile(values, 50), _percentile(values, 99)
        lines.append(f"lidar:   {name:<9} {p50:.2f} / {p99:.2f} / {max(values):.2f} ms "
                     f"({p99 / LATENCY_TARGET_MS:.1%} of the budget at p99)")
    lines.append(f"lidar:   {baseline_name} / fastload at p50 {_percentile(times[baseline_name], 50) / _percentile(times['fastload'], 50):.2f}x, "
                 f"at p99 {_percentile(times[baseline_name], 99) / _percentile(times['fastload'], 99):.2f}x")
    return lines


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def voxelizer_table(scan: np.ndarray, rounds: int, burst: int = 8) -> list[str]:
    """Lines of the single-scan table: per configuration, µs (min / median, one thread) of
    fastload, spconv, numpy and a copy of the scan's bytes, with the ratios spconv /
    fastload and fastload / copy. Each of ``rounds`` rounds gives each implementation in
    turn one untimed call, then ``burst`` timed ones: interleaved against drift of the
    machine, and timed in the steady state of calling one voxelizer scan after scan."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines = [(f"lidar: one scan of {len(scan)} points, single-threaded, µs min / median of {rounds} x {burst} "
                  "calls (interleaved bursts); ratios min / median")]
        for name, config in CONFIGS.items():
            impls: dict[str, Callable[[np.ndarray], Any]] = {"fastload": Voxelizer(*config)}
            if spconv_available():
                impls["spconv"] = SpconvVoxelizer(*config)
            impls["numpy"] = NumpyVoxelizer(*config)
            impls["copy"] = np.copy
            times: dict[str, list[float]] = {k: [] for k in impls}
            for _ in range(rounds):
                for key, impl in impls.items():
                    impl(scan)
                    for _ in range(burst):
                        start = time.perf_counter()
                        impl(scan)
                        times[key].append((time.perf_counter() - start) * 1e6)
            cells = ", ".join(f"{k} {min(t):.0f} / {statistics.median(t):.0f}" for k, t in times.items())
            ratios = []
            if "spconv" in times:
                ratios.append(f"spconv / fastload {_ratio(times['spconv'], times['fastload'])}")
            ratios.append(f"fastload / copy {_ratio(times['fastload'], times['copy'])}")
            lines.append(f"lidar: {name:<23} {cells}; {'; '.join(ratios)}")
        return lines
    finally:
        torch.set_num_threads(threads)


def _ratio(numerator: list[float], denominator: list[float]) -> str:
    return f"{min(numerator) / min(denominator):.2f}x / {statistics.median(numerator) / statistics.median(denominator):.2f}x"
