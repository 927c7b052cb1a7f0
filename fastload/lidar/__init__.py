"""Point clouds: voxelization (C++ core in fastload_ext), I/O, datasets."""

from .voxelize import Voxelizer, dynamic_voxelize, hard_voxelize

__all__ = ["Voxelizer", "dynamic_voxelize", "hard_voxelize"]
