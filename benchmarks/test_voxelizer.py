"""pytest-benchmark suite: one scan through fastload's voxelizer, spconv's PointToVoxel,
the numpy reference rules, and a plain copy of the scan's bytes — same scan, same run.

    .venv/bin/python -m pytest benchmarks/test_voxelizer.py --benchmark-only

Compare rows of a group as ratios (spconv / fastload, fastload / copy); single-threaded.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from fastload.lidar import VOXELIZER_PRESETS, Voxelizer
from fastload.lidar.synthetic import make_scan

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests import voxel_reference  # noqa: E402

CONFIGS = VOXELIZER_PRESETS
SCAN = make_scan(0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spconv_voxelizer(voxel_size, pc_range, max_points, max_voxels):
    from spconv.pytorch.utils import PointToVoxel

    return PointToVoxel(vsize_xyz=voxel_size, coors_range_xyz=pc_range, num_point_features=4,
                        max_num_voxels=max_voxels, max_num_points_per_voxel=max_points, device=torch.device("cpu"))


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("impl", ["fastload", "spconv", "numpy", "copy"])
def test_voxelize_one_scan(benchmark, config, impl):
    benchmark.group = config
    voxel_size, pc_range, max_points, max_voxels = CONFIGS[config]
    if impl == "fastload":
        voxelizer = Voxelizer(*CONFIGS[config])
        benchmark(voxelizer, SCAN)
    elif impl == "spconv":
        if importlib.util.find_spec("spconv") is None:
            pytest.skip("spconv is not installed")
        points = torch.from_numpy(SCAN)
        benchmark(spconv_voxelizer(*CONFIGS[config]), points)
    elif impl == "numpy":
        benchmark.pedantic(voxel_reference.hard_voxelize, (SCAN, voxel_size, pc_range, max_points, max_voxels),
                           rounds=3, iterations=1)
    else:
        benchmark(np.copy, SCAN)
