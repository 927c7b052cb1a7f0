"""Point clouds: voxelization (C++ core in fastload_ext), file readers, generated scans."""

from .dataset import LidarDataset, RandomFlip, RandomRotation, RandomScaling, RangeCrop, ShufflePoints
from .io import PointCloud, PointCloudError, read_kitti_bin, read_pcd, read_ply, read_point_cloud
from .voxelize import VOXELIZER_PRESETS, Voxelizer, dynamic_voxelize, hard_voxelize

__all__ = [
    "LidarDataset",
    "PointCloud",
    "PointCloudError",
    "RandomFlip",
    "RandomRotation",
    "RandomScaling",
    "RangeCrop",
    "ShufflePoints",
    "VOXELIZER_PRESETS",
    "Voxelizer",
    "dynamic_voxelize",
    "hard_voxelize",
    "read_kitti_bin",
    "read_pcd",
    "read_ply",
    "read_point_cloud",
]
