"""Voxelization in torch tensor ops, on any device: the CUDA kernel of the registered ops
(fastload/lidar/ops.py), bit-exact with the C++ voxelizer.

The C++ voxelizer numbers voxels with a hash table while it streams through the points;
that is sequential. Here the same rules (fastload_ext/voxelize.cpp) are met with sorts
and scans, which a GPU runs in parallel:

1. each point's key: its voxel's linear index ``(z * gy + y) * gx + x``, or ``OUTSIDE``
   (larger than any index) — ``q = (p - min) / size`` in the points' dtype with the
   float32 parameters widened to it, kept iff ``0 <= q < grid`` on every axis, then
   truncated, which is ``floor`` for ``q >= 0`` (IEEE subtraction and division round the
   same on every device, so the keys are the C++ ones bit for bit);
2. a *stable* sort of the keys groups each voxel's points with their input order kept, so
   a group's first element is the voxel's first point and a point's place in its group is
   its row in the voxel;
3. voxels are numbered by their first point's index (an argsort of those), which is the
   C++ voxelizer's "order of first arrival"; the numbers from ``max_voxels`` on are
   refused, as the C++ voxelizer refuses a voxel that would open past the cap;
4. the points whose row is below ``max_points`` are scattered to ``voxels[number, row]``
   (each slot written once, so the scatter is deterministic).

The output sizes depend on the data, so a GPU call synchronises once, to learn how many
voxels there are; everything else is queued without waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

OUTSIDE = torch.iinfo(torch.int64).max


def voxel_keys(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
               grid: Sequence[int]) -> torch.Tensor:
    """Each point's voxel key (int64, ``OUTSIDE`` for a point that is not kept)."""
    # float32 first (the rules' parameters are float32), then widened to the points' dtype.
    params = torch.tensor([*point_cloud_range[:3], *voxel_size], dtype=torch.float32)
    params = params.to(device=points.device, dtype=points.dtype)
    low, size = params[:3], params[3:]
    q = (points[:, :3] - low) / size
    bound = torch.tensor(list(grid), dtype=points.dtype, device=points.device)
    kept = ((q >= 0) & (q < bound)).all(dim=1)
    cells = torch.where(kept[:, None], q, torch.zeros((), dtype=q.dtype, device=q.device)).to(torch.int64)
    gx, gy = int(grid[0]), int(grid[1])
    keys = (cells[:, 2] * gy + cells[:, 1]) * gx + cells[:, 0]
    return torch.where(kept, keys, torch.full_like(keys, OUTSIDE))


def _run_starts(sorted_values: torch.Tensor) -> torch.Tensor:
    """Where each run of equal values of a sorted tensor starts (bool, one per element)."""
    starts = torch.ones(sorted_values.numel(), dtype=torch.bool, device=sorted_values.device)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return starts


def _places_in_runs(starts: torch.Tensor) -> torch.Tensor:
    """Each element's place in its run (0 for the run's first), from :func:`_run_starts`.
    After a stable sort, that is a point's rank among the points of its voxel in input
    order: its row."""
    positions = torch.arange(starts.numel(), device=starts.device)
    return positions - torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), 0).values


class _Groups:
    """The points grouped by key (step 2), and the groups numbered by first arrival (step 3)."""

    def __init__(self, keys: torch.Tensor) -> None:
        n = keys.numel()
        device = keys.device
        self.sorted_keys, self.order = torch.sort(keys, stable=True)
        self.starts = starts = _run_starts(self.sorted_keys)
        self.group_of_sorted = torch.cumsum(starts, 0) - 1  # group of each sorted position
        # The one synchronisation: how many groups, and whether the last one (the largest
        # key) is OUTSIDE's.
        groups, outside = torch.stack([starts.sum(), (self.sorted_keys[-1:] == OUTSIDE).sum()]).tolist()
        self.voxel_count = groups - outside
        self.group_start = torch.nonzero_static(starts, size=groups).flatten()
        self.group_keys = self.sorted_keys[self.group_start]
        first_point = self.order[self.group_start]
        # The OUTSIDE group (the largest key: the last group, if any) is numbered after
        # every voxel, so that refusing numbers >= the voxel count refuses it too.
        first_point = torch.where(self.group_keys == OUTSIDE, torch.full_like(first_point, n), first_point)
        self.by_arrival = torch.argsort(first_point)  # groups in the order voxels open
        self.number = torch.empty_like(self.by_arrival)
        self.number[self.by_arrival] = torch.arange(self.by_arrival.numel(), device=device)

    def point_numbers(self, limit: int) -> torch.Tensor:
        """Each point's voxel number (int64), -1 outside or at numbers >= ``limit``."""
        numbers = self.number[self.group_of_sorted]
        numbers = torch.where(numbers < limit, numbers, torch.full_like(numbers, -1))
        by_point = torch.empty_like(numbers)
        by_point[self.order] = numbers
        return by_point

    def coordinates(self, count: int, grid: Sequence[int]) -> torch.Tensor:
        """``(count, 3)`` int32 (z, y, x) of the first ``count`` voxels in number order."""
        keys = self.group_keys[self.by_arrival[:count]]
        gx, gy = int(grid[0]), int(grid[1])
        return torch.stack([keys // (gx * gy), (keys // gx) % gy, keys % gx], dim=1).to(torch.int32)


def hard_voxelize(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                  grid: Sequence[int], max_points_per_voxel: int,
                  max_voxels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(voxels (M, max_points, C), coords (M, 3) int32 zyx, num_points (M,) int32,
    point_voxel_id (N,) int64)`` on the points' device; ``grid`` is the validated grid size
    (x, y, z) of the configuration."""
    n, channels = points.shape
    device = points.device
    groups = _Groups(voxel_keys(points, voxel_size, point_cloud_range, grid))
    count = min(groups.voxel_count, max_voxels)
    point_voxel_id = groups.point_numbers(count)
    sorted_numbers = point_voxel_id[groups.order]
    row = _places_in_runs(groups.starts)  # the stable sort kept input order within a group
    placed = (sorted_numbers >= 0) & (row < max_points_per_voxel)
    # Every point is written: those not placed to one extra row past the voxels, so that
    # no boolean mask (a synchronisation each) picks the placed ones.
    slots = count * max_points_per_voxel
    target = torch.where(placed, sorted_numbers * max_points_per_voxel + row, slots)
    flat = torch.zeros((slots + 1, channels), dtype=points.dtype, device=device)
    flat[target] = points[groups.order]
    voxels = flat[:slots].view(count, max_points_per_voxel, channels)
    sizes = torch.diff(groups.group_start, append=torch.tensor([n], device=device))
    num_points = sizes[groups.by_arrival[:count]].clamp(max=max_points_per_voxel).to(torch.int32)
    return voxels, groups.coordinates(count, grid), num_points, point_voxel_id


def point_rows(point_voxel_id: torch.Tensor) -> torch.Tensor:
    """Each point's row in its voxel (its place among the points with the same voxel id,
    in input order), from hard voxelization's ``point_voxel_id``: where it was copied
    to, if the row is below ``max_points_per_voxel``. The gradient of ``voxels`` with
    respect to the points follows these rows back."""
    sorted_ids, order = torch.sort(point_voxel_id, stable=True)
    rows = torch.empty_like(order)
    rows[order] = _places_in_runs(_run_starts(sorted_ids))
    return rows


def dynamic_voxelize(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                     grid: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(point_coords (N, 3) int32 zyx or -1s, voxel_coords (K, 3) int32 by first arrival,
    point_voxel (N,) int64 or -1)`` on the points' device."""
    groups = _Groups(voxel_keys(points, voxel_size, point_cloud_range, grid))
    count = groups.voxel_count
    point_voxel = groups.point_numbers(count)
    voxel_coords = groups.coordinates(count, grid)
    dropped = torch.full((1, 3), -1, dtype=torch.int32, device=points.device)
    point_coords = torch.cat([voxel_coords, dropped])[point_voxel]  # -1 picks the dropped row
    return point_coords, voxel_coords, point_voxel
