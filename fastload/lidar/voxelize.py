"""Voxelization: a thin layer over ``fastload._ext`` (see fastload_ext/voxelize.cpp for
the rules), taking and returning numpy arrays or torch CPU tensors without copies; torch
tensors on another device, and any tensor while ``torch.compile`` or ``torch.export``
traces, go through the registered ops (NOTE [ Voxelization ops ] in ops.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from fastload.extension import extension

from . import ops

#: The voxelization settings of common detectors' published configurations (OpenPCDet /
#: mmdet3d), in :class:`Voxelizer`'s argument order (``voxel_size``, ``point_cloud_range``,
#: ``max_points_per_voxel``, ``max_voxels``): ``Voxelizer(*VOXELIZER_PRESETS["second_kitti"])``.
VOXELIZER_PRESETS: dict[str, tuple[list[float], list[float], int, int]] = {
    "pointpillars_kitti": ([0.16, 0.16, 4.0], [0, -39.68, -3, 69.12, 39.68, 1], 32, 16000),
    "second_kitti": ([0.05, 0.05, 0.1], [0, -40, -3, 70.4, 40, 1], 5, 16000),
    "centerpoint_nuscenes": ([0.075, 0.075, 0.2], [-54, -54, -5, 54, 54, 3], 10, 120000),
}

Array = Union[np.ndarray, torch.Tensor]


def _through_op(points: Array) -> bool:
    # Eager CPU calls skip the dispatcher (~20 us a call) and the per-point ids they did
    # not ask for; everything else needs the op (a gradient too: the op has one).
    return isinstance(points, torch.Tensor) and (points.device.type != "cpu" or points.requires_grad
                                                 or torch.compiler.is_compiling())


def _as_numpy(points: Array) -> tuple[np.ndarray, bool]:
    if isinstance(points, torch.Tensor):
        return points.detach().numpy(), True
    if isinstance(points, np.ndarray):
        return points, False
    raise TypeError(f"points must be a numpy array or a torch tensor, got {type(points).__name__}")


def _returned(arrays: tuple[np.ndarray, ...], as_torch: bool) -> tuple[Any, ...]:
    return tuple(torch.from_numpy(a) for a in arrays) if as_torch else arrays


def _floats(values: Sequence[float], count: int, name: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != count:
        raise ValueError(f"{name} must have {count} values, got {len(values)}")
    return values


class Voxelizer:
    """Hard voxelization, spconv's ``PointToVoxel`` in spirit: configured once, called per scan.

    Args:
        voxel_size: ``(x, y, z)`` sizes, > 0.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
        max_points_per_voxel: points kept per voxel (the first ones, in input order).
        max_voxels: voxels kept per scan (those opened first).

    Calling it with points ``(N, C)`` (C >= 3: x, y, z, then any features), float32 or
    float64, numpy or a torch tensor on any device, returns the same kind on the same
    device. CUDA tensors are voxelized on the GPU by the same rules written in tensor ops
    (tensor_voxelize.py; tested bit-exact against the C++ voxelizer on the CPU, and on a
    GPU by ``pytest -m cuda`` where one exists). Outputs: ``voxels (M, max_points, C)`` in the
    points' dtype, zero-padded; ``coords (M, 3)`` int32 in (z, y, x) order; ``num_points
    (M,)`` int32; with ``return_point_voxel_id``, ``point_voxel_id (N,)`` int64 (-1 for a
    point out of range or whose voxel was refused by ``max_voxels``; a point dropped only
    because its voxel was full keeps the voxel's id). Outputs are fresh arrays; the
    hash table and scratch buffers are kept between calls. Thread-safe: calls on one
    object from several threads are serialised, and a thread waits for its turn without
    holding the GIL.

    Raises:
        ValueError: a non-positive or non-finite voxel size, an empty range, bad caps, or
            points of the wrong shape; ``TypeError`` for other dtypes.
    """

    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                 max_points_per_voxel: int, max_voxels: int) -> None:
        self.voxel_size = _floats(voxel_size, 3, "voxel_size")
        self.point_cloud_range = _floats(point_cloud_range, 6, "point_cloud_range")
        self.max_points_per_voxel = int(max_points_per_voxel)
        self.max_voxels = int(max_voxels)
        ops.check_caps(self.max_points_per_voxel, self.max_voxels)
        native = extension("fastload.lidar.Voxelizer")
        self._impl = native.Voxelizer(self.voxel_size, self.point_cloud_range, self.max_points_per_voxel,
                                      self.max_voxels)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Cells along (x, y, z)."""
        return tuple(self._impl.grid_size)  # type: ignore[return-value]

    def __call__(self, points: Array, return_point_voxel_id: bool = False) -> tuple[Any, ...]:
        if _through_op(points):
            outputs = ops.hard_voxelize(points, self.voxel_size, self.point_cloud_range, self.max_points_per_voxel,
                                        self.max_voxels)
            return outputs if return_point_voxel_id else outputs[:3]
        array, as_torch = _as_numpy(points)
        return _returned(self._impl(array, return_point_voxel_id), as_torch)

    def __repr__(self) -> str:
        return (f"Voxelizer(voxel_size={self.voxel_size}, point_cloud_range={self.point_cloud_range}, "
                f"max_points_per_voxel={self.max_points_per_voxel}, max_voxels={self.max_voxels})")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable for spawn workers: rebuilt from its configuration
        return (Voxelizer, (self.voxel_size, self.point_cloud_range, self.max_points_per_voxel, self.max_voxels))


def hard_voxelize(points: Array, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                  max_points_per_voxel: int, max_voxels: int, return_point_voxel_id: bool = False) -> tuple[Any, ...]:
    """One-off :class:`Voxelizer` call (build a ``Voxelizer`` to reuse buffers across scans)."""
    return Voxelizer(voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)(points, return_point_voxel_id)


def dynamic_voxelize(points: Array, voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> tuple[Any, ...]:
    """Dynamic voxelization (no caps): ``(point_coords (N, 3) int32 zyx, a -1 row for a dropped
    point; voxel_coords (K, 3) int32, unique, in order of first appearance; point_voxel
    (N,) int64 index into voxel_coords, -1 for a dropped point)``, numpy or torch like the
    input, on the input's device."""
    if _through_op(points):
        return ops.dynamic_voxelize(points, _floats(voxel_size, 3, "voxel_size"),  # type: ignore[arg-type]
                                    _floats(point_cloud_range, 6, "point_cloud_range"))
    array, as_torch = _as_numpy(points)
    native = extension("fastload.lidar.dynamic_voxelize")
    return _returned(
        native.dynamic_voxelize(array, _floats(voxel_size, 3, "voxel_size"), _floats(point_cloud_range, 6,
                                                                                       "point_cloud_range")),
        as_torch,
    )
