"""A straightforward numpy implementation of the voxelization rules (the issue's text),
written independently of fastload_ext, to test it against."""

from __future__ import annotations

import numpy as np


def grid_size(voxel_size, point_cloud_range) -> np.ndarray:
    vs = np.asarray(voxel_size, dtype=np.float32)
    lo, hi = np.asarray(point_cloud_range[:3], np.float32), np.asarray(point_cloud_range[3:], np.float32)
    quotient = (hi - lo) / vs  # float32 arithmetic
    return np.floor(quotient.astype(np.float64) + 0.5).astype(np.int64)  # halves away from zero (quotient > 0)


def point_coords(points: np.ndarray, voxel_size, point_cloud_range) -> tuple[np.ndarray, np.ndarray]:
    """(zyx int64 (N, 3), kept bool (N,)) with the arithmetic in the points' dtype."""
    dtype = points.dtype
    vs = np.asarray(voxel_size, dtype=np.float32).astype(dtype)
    lo = np.asarray(point_cloud_range[:3], dtype=np.float32).astype(dtype)
    grid = grid_size(voxel_size, point_cloud_range)
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.floor((points[:, :3] - lo) / vs)
        kept = np.all((c >= 0) & (c < grid.astype(dtype)), axis=1)
    zyx = np.where(kept[:, None], c[:, ::-1], -1).astype(np.int64)
    return zyx, kept


def hard_voxelize(points, voxel_size, point_cloud_range, max_points, max_voxels):
    n, channels = points.shape
    gx, gy, _ = grid_size(voxel_size, point_cloud_range)
    zyx, kept = point_coords(points, voxel_size, point_cloud_range)
    keys = np.where(kept, (zyx[:, 0] * gy + zyx[:, 1]) * gx + zyx[:, 2], -1)
    index = np.flatnonzero(kept)
    uniq, first, inverse = np.unique(keys[index], return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))  # voxels numbered by first arrival
    number = np.full(n, -1, dtype=np.int64)
    number[index] = rank[inverse.reshape(-1)]
    number[number >= max_voxels] = -1  # refused voxels
    m = int(min(len(uniq), max_voxels))
    voxels = np.zeros((m, max_points, channels), dtype=points.dtype)
    coords = np.zeros((m, 3), dtype=np.int32)
    counts = np.zeros(m, dtype=np.int64)
    for i in np.flatnonzero(number >= 0):  # input order: first max_points points per voxel
        v = number[i]
        if counts[v] == 0:
            coords[v] = zyx[i]
        if counts[v] < max_points:
            voxels[v, counts[v]] = points[i]
        counts[v] += 1
    return voxels, coords, np.minimum(counts, max_points).astype(np.int32), number


def dynamic_voxelize(points, voxel_size, point_cloud_range):
    zyx, kept = point_coords(points, voxel_size, point_cloud_range)
    gx, gy, _ = grid_size(voxel_size, point_cloud_range)
    keys = np.where(kept, (zyx[:, 0] * gy + zyx[:, 1]) * gx + zyx[:, 2], -1)
    index = np.flatnonzero(kept)
    uniq, first, inverse = np.unique(keys[index], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    point_voxel = np.full(len(points), -1, dtype=np.int64)
    point_voxel[index] = rank[inverse.reshape(-1)]
    voxel_coords = zyx[index[first[order]]].astype(np.int32)
    return zyx.astype(np.int32), voxel_coords, point_voxel
