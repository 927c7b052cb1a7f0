"""Voxelization as torch operators: ``torch.ops.fastload.hard_voxelize`` and
``torch.ops.fastload.dynamic_voxelize``.

NOTE [ Voxelization ops ]

Registered with ``torch.library.custom_op``, so that a model may voxelize inside
``forward`` and still be captured whole by ``torch.compile(fullgraph=True)`` and
``torch.export``: the compiler sees one opaque operator instead of numpy calls it cannot
trace. Each op has

* a CPU kernel: the C++ voxelizer (fastload_ext/voxelize.cpp), one per configuration kept
  in a small cache so that its hash table and scratch buffers are reused across calls;
* a kernel for every other device (CUDA, and whatever torch runs on): the same rules in
  torch tensor ops (fastload/lidar/tensor_voxelize.py), bit-exact with the C++ one;
* a fake (meta) kernel: the number of voxels depends on the data, so it is a new unbacked
  symbolic size, bounded by ``max_voxels`` for hard voxelization;
* for hard voxelization, a gradient: ``voxels`` holds copies of points, so a point's
  gradient is that of the entry it was copied to (zero for a point not copied). The
  other outputs are integers.

``hard_voxelize`` always returns the per-point voxel ids (an op's outputs cannot depend
on an argument's value); :class:`fastload.lidar.Voxelizer` drops them unless asked.
Importing ``fastload.lidar`` registers the ops (also needed to load an exported program).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from fastload.extension import extension

from . import tensor_voxelize

Tensor = torch.Tensor


@functools.lru_cache(maxsize=16)
def _native_voxelizer(voxel_size: tuple[float, ...], point_cloud_range: tuple[float, ...], max_points_per_voxel: int,
                      max_voxels: int) -> Any:
    # Also the one validation of a configuration (and its grid size) for every device.
    native = extension("torch.ops.fastload voxelization")
    return native.Voxelizer(list(voxel_size), list(point_cloud_range), max_points_per_voxel, max_voxels)


def _grid(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> list[int]:
    return list(_native_voxelizer(tuple(voxel_size), tuple(point_cloud_range), 1, 1).grid_size)


def check_caps(max_points_per_voxel: int, max_voxels: int) -> None:
    """Caps the C++ voxelizer can hold (32-bit counts); it checks the lower bounds itself."""
    for name, value in (("max_points_per_voxel", max_points_per_voxel), ("max_voxels", max_voxels)):
        if value >= 2**31:
            raise ValueError(f"{name} must be below 2^31, got {value}")


def _check(points: Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
           caps: tuple[int, int] | None = None) -> None:
    """Every kernel's checks of its arguments, in the C++ voxelizer's words, for a tensor on
    any device (or a fake one); the C++ voxelizer checks the rest of a configuration."""
    if len(voxel_size) != 3:
        raise ValueError(f"voxel_size must have 3 values, got {len(voxel_size)}")
    if len(point_cloud_range) != 6:
        raise ValueError(f"point_cloud_range must have 6 values, got {len(point_cloud_range)}")
    if caps is not None:
        check_caps(*caps)
    if points.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"points must be float32 or float64, got {points.dtype}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, C) with C >= 3 (x, y, z, ...), got {tuple(points.shape)}")


@torch.library.custom_op("fastload::hard_voxelize", mutates_args=())
def hard_voxelize(points: Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                  max_points_per_voxel: int, max_voxels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hard voxelization of ``points`` (N, C): ``(voxels (M, max_points, C), coords (M, 3)
    int32 zyx, num_points (M,) int32, point_voxel_id (N,) int64)`` on the points' device,
    with :class:`fastload.lidar.Voxelizer`'s rules. This body is the kernel of every device
    but the CPU."""
    _check(points, voxel_size, point_cloud_range, (max_points_per_voxel, max_voxels))
    native = _native_voxelizer(tuple(voxel_size), tuple(point_cloud_range), max_points_per_voxel, max_voxels)
    return tensor_voxelize.hard_voxelize(points, voxel_size, point_cloud_range, native.grid_size,
                                         max_points_per_voxel, max_voxels)


@hard_voxelize.register_kernel("cpu")
def _hard_voxelize_cpu(points: Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                       max_points_per_voxel: int, max_voxels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(points, voxel_size, point_cloud_range, (max_points_per_voxel, max_voxels))
    native = _native_voxelizer(tuple(voxel_size), tuple(point_cloud_range), max_points_per_voxel, max_voxels)
    return tuple(torch.from_numpy(a) for a in native(points.detach().numpy(), True))  # type: ignore[return-value]


@hard_voxelize.register_fake
def _hard_voxelize_fake(points: Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                        max_points_per_voxel: int, max_voxels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(points, voxel_size, point_cloud_range, (max_points_per_voxel, max_voxels))
    voxel_count = torch.library.get_ctx().new_dynamic_size(max=max_voxels)
    channels = points.shape[1]
    return (points.new_empty((voxel_count, max_points_per_voxel, channels)),
            points.new_empty((voxel_count, 3), dtype=torch.int32),
            points.new_empty((voxel_count,), dtype=torch.int32),
            points.new_empty((points.shape[0],), dtype=torch.int64))


def _hard_voxelize_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    points, _, _, max_points_per_voxel, _ = inputs
    ctx.save_for_backward(output[3])
    ctx.max_points_per_voxel = max_points_per_voxel
    ctx.points_shape = points.shape


def _hard_voxelize_backward(ctx: Any, grad_voxels: Tensor | None, *_: Any) -> tuple[Tensor | None, None, None, None,
                                                                                        None]:
    # voxels[id, row] is a copy of the point, so the point's gradient is that entry's
    # gradient; points not copied (outside, refused, past the row cap) get zero.
    if grad_voxels is None:
        return None, None, None, None, None
    (point_voxel_id,) = ctx.saved_tensors
    rows = tensor_voxelize.point_rows(point_voxel_id)
    copied = (point_voxel_id >= 0) & (rows < ctx.max_points_per_voxel)
    # Points not copied read an appended zero voxel: no branch on the (data-dependent) voxel count.
    padded = torch.cat([grad_voxels, grad_voxels.new_zeros((1, *grad_voxels.shape[1:]))])
    voxel = torch.where(copied, point_voxel_id, grad_voxels.shape[0])
    row = torch.where(copied, rows, 0)
    return padded[voxel, row], None, None, None, None


hard_voxelize.register_autograd(_hard_voxelize_backward, setup_context=_hard_voxelize_setup_context)


@torch.library.custom_op("fastload::dynamic_voxelize", mutates_args=())
def dynamic_voxelize(points: Tensor, voxel_size: Sequence[float],
                     point_cloud_range: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic voxelization of ``points`` (N, C): ``(point_coords (N, 3) int32 zyx or -1s,
    voxel_coords (K, 3) int32 by first arrival, point_voxel (N,) int64 or -1)`` on the
    points' device, with :func:`fastload.lidar.dynamic_voxelize`'s rules. This body is the
    kernel of every device but the CPU."""
    _check(points, voxel_size, point_cloud_range)
    return tensor_voxelize.dynamic_voxelize(points, voxel_size, point_cloud_range,
                                            _grid(voxel_size, point_cloud_range))


@dynamic_voxelize.register_kernel("cpu")
def _dynamic_voxelize_cpu(points: Tensor, voxel_size: Sequence[float],
                          point_cloud_range: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    _check(points, voxel_size, point_cloud_range)
    native = extension("torch.ops.fastload.dynamic_voxelize")
    arrays = native.dynamic_voxelize(points.detach().numpy(), list(voxel_size), list(point_cloud_range))
    return tuple(torch.from_numpy(a) for a in arrays)  # type: ignore[return-value]


@dynamic_voxelize.register_fake
def _dynamic_voxelize_fake(points: Tensor, voxel_size: Sequence[float],
                           point_cloud_range: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    _check(points, voxel_size, point_cloud_range)
    voxel_count = torch.library.get_ctx().new_dynamic_size()
    n = points.shape[0]
    return (points.new_empty((n, 3), dtype=torch.int32), points.new_empty((voxel_count, 3), dtype=torch.int32),
            points.new_empty((n,), dtype=torch.int64))
