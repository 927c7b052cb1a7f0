"""fastload.lidar voxelization: bit-exact with the rules (tests/voxel_reference.py) and
with spconv's PointToVoxel, on generated scans and adversarial points."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastload
from fastload.lidar import VOXELIZER_PRESETS, Voxelizer, dynamic_voxelize, hard_voxelize
from fastload.lidar.synthetic import make_scan

from . import voxel_reference as ref

CONFIGS = VOXELIZER_PRESETS  # voxel_size, point_cloud_range, max_points_per_voxel, max_voxels


@pytest.fixture(scope="module")
def scans():
    return [make_scan(seed) for seed in (0, 1)]


def assert_matches_reference(points, voxel_size, pc_range, max_points, max_voxels):
    got = Voxelizer(voxel_size, pc_range, max_points, max_voxels)(points, return_point_voxel_id=True)
    want = ref.hard_voxelize(points, voxel_size, pc_range, max_points, max_voxels)
    names = ("voxels", "coords", "num_points", "point_voxel_id")
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, f"{name}: {g.shape} != {w.shape}"
        assert np.array_equal(g, w, equal_nan=True), f"{name} differs"
    assert got[0].dtype == points.dtype and got[1].dtype == np.int32 and got[3].dtype == np.int64
    return got


@pytest.mark.parametrize("config", list(CONFIGS))
def test_bit_exact_on_generated_scans(scans, config):
    for scan in scans:
        voxels, coords, num_points, ids = assert_matches_reference(scan, *CONFIGS[config])
        assert len(voxels) > 1000 and num_points.min() >= 1
    shuffled = scans[0][np.random.default_rng(0).permutation(len(scans[0]))]
    assert_matches_reference(shuffled, *CONFIGS[config])
    assert_matches_reference(scans[0].astype(np.float64), *CONFIGS[config])


def test_one_voxelizer_reused_across_inputs_stays_exact(scans):
    # The hash table keeps its memory between calls and removes the last call's voxels at
    # the start of the next; any slip shows up as a wrong voxel in a later call. Also
    # exercises both fill strategies (long runs: by run; scattered points: by point),
    # strided rows, and a grid too fine for 32-bit keys (linear 64-bit keys).
    wide = ([0.001, 0.001, 0.001], [-60, -60, -5, 60, 60, 5], 4, 60000)
    for voxel_size, pc_range, max_points, max_voxels in [*CONFIGS.values(), wide]:
        voxelizer = Voxelizer(voxel_size, pc_range, max_points, max_voxels)
        rng = np.random.default_rng(0)
        extra_columns = np.concatenate([scans[1], rng.random((len(scans[1]), 2), dtype=np.float32)], axis=1)
        inputs = [scans[0], scans[1], scans[0][rng.permutation(len(scans[0]))],
                  adversarial_points(voxel_size, pc_range, np.float32), scans[0][:0], extra_columns[:, :4],
                  scans[1].astype(np.float64), scans[0]]
        for points in inputs:
            got = voxelizer(points, return_point_voxel_id=True)
            want = ref.hard_voxelize(points, voxel_size, pc_range, max_points, max_voxels)
            for g, w in zip(got, want):
                assert g.shape == w.shape and np.array_equal(g, w, equal_nan=True)


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv is not installed")
@pytest.mark.parametrize("config", list(CONFIGS))
def test_identical_to_spconv_point_to_voxel(scans, config):
    from spconv.pytorch.utils import PointToVoxel

    voxel_size, pc_range, max_points, max_voxels = CONFIGS[config]
    theirs = PointToVoxel(vsize_xyz=voxel_size, coors_range_xyz=pc_range, num_point_features=4,
                          max_num_voxels=max_voxels, max_num_points_per_voxel=max_points, device=torch.device("cpu"))
    ours = Voxelizer(voxel_size, pc_range, max_points, max_voxels)
    for scan in scans:
        for mine, spconv_out in zip(ours(torch.from_numpy(scan)), theirs(torch.from_numpy(scan))):
            assert torch.equal(mine, spconv_out)


def adversarial_points(voxel_size, pc_range, dtype) -> np.ndarray:
    """Faces of the range, ±1 ulp around voxel boundaries, NaN/inf/huge values."""
    vs = np.asarray(voxel_size, np.float32).astype(dtype)
    lo = np.asarray(pc_range[:3], np.float32).astype(dtype)
    hi = np.asarray(pc_range[3:], np.float32).astype(dtype)
    rng = np.random.default_rng(0)
    rows = []
    inside = lo + (hi - lo) * rng.random((200, 3)).astype(dtype)
    for axis in range(3):
        for value in (lo[axis], hi[axis]):
            for v in (np.nextafter(value, -np.inf, dtype=dtype), value, np.nextafter(value, np.inf, dtype=dtype)):
                p = inside[: 10].copy()
                p[:, axis] = v
                rows.append(p)
        boundaries = lo[axis] + vs[axis] * rng.integers(1, 5, 20).astype(dtype)
        for b in (np.nextafter(boundaries, -np.inf), boundaries, np.nextafter(boundaries, np.inf)):
            p = inside[:20].copy()
            p[:, axis] = b
            rows.append(p)
    special = inside[:6].copy()
    special[[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]] = [np.nan, np.inf, -np.inf, 1e30, -1e30, np.nan]
    rows += [inside, special]
    xyz = np.concatenate(rows).astype(dtype)
    features = rng.random((len(xyz), 1)).astype(dtype)
    return np.concatenate([xyz, features], axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_bit_exact_on_adversarial_points(config, dtype):
    voxel_size, pc_range, _, _ = CONFIGS[config]
    points = adversarial_points(voxel_size, pc_range, dtype)
    for max_points, max_voxels in ((32, 100000), (1, 5), (2, 40)):  # ample, and tight caps
        assert_matches_reference(points, voxel_size, pc_range, max_points, max_voxels)
        assert_matches_reference(points[::-1].copy(), voxel_size, pc_range, max_points, max_voxels)


def test_caps_semantics_on_a_small_example():
    # voxels 1 m wide on x; points arrive in voxels A A B C A B
    points = np.array([[0.1, 0, 0], [0.2, 0, 0], [1.5, 0, 0], [2.5, 0, 0], [0.3, 0, 0], [1.6, 0, 0]], np.float32)
    voxels, coords, num_points, ids = hard_voxelize(points, [1, 1, 1], [0, 0, 0, 4, 1, 1], 2, 2, True)
    assert coords.tolist() == [[0, 0, 0], [0, 0, 1]]  # C would be voxel 2 >= max_voxels: refused
    assert num_points.tolist() == [2, 2]
    assert ids.tolist() == [0, 0, 1, -1, 0, 1]  # the third A point overflows but keeps its voxel id
    assert voxels[0, :, 0].tolist() == pytest.approx([0.1, 0.2])


def test_point_exactly_at_max_is_dropped_and_at_min_kept():
    points = np.array([[0, 0, 0], [4, 0.5, 0.5], [np.nextafter(np.float32(4), np.float32(0)), 0.5, 0.5]], np.float32)
    _, coords, _, ids = hard_voxelize(points, [1, 1, 1], [0, 0, 0, 4, 1, 1], 4, 10, True)
    assert ids.tolist() == [0, -1, 1] and coords.tolist() == [[0, 0, 0], [0, 0, 3]]


@pytest.mark.parametrize("channels", [3, 6])
def test_other_channel_counts_and_empty_clouds(channels):
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 5, (500, channels)).astype(np.float32)
    assert_matches_reference(points, [0.5, 0.5, 0.5], [0, 0, 0, 4, 4, 4], 3, 50)
    empty = np.zeros((0, channels), np.float32)
    voxels, coords, num_points = Voxelizer([0.5] * 3, [0, 0, 0, 4, 4, 4], 3, 50)(empty)
    assert voxels.shape == (0, 3, channels) and coords.shape == (0, 3) and num_points.shape == (0,)
    outside = np.full((10, channels), 100.0, np.float32)
    assert Voxelizer([0.5] * 3, [0, 0, 0, 4, 4, 4], 3, 50)(outside)[0].shape == (0, 3, channels)


def test_dynamic_voxelization_matches_reference(scans):
    for config in CONFIGS.values():
        voxel_size, pc_range = config[:2]
        for points in (scans[0], adversarial_points(voxel_size, pc_range, np.float64)):
            got = dynamic_voxelize(points, voxel_size, pc_range)
            want = ref.dynamic_voxelize(points, voxel_size, pc_range)
            for g, w in zip(got, want):
                assert g.shape == w.shape and np.array_equal(g, w)


def test_torch_in_torch_out_without_copies(scans):
    points = torch.from_numpy(scans[0])
    voxels, coords, num_points = Voxelizer(*CONFIGS["pointpillars_kitti"])(points)
    assert isinstance(voxels, torch.Tensor) and voxels.dtype == torch.float32 and coords.dtype == torch.int32
    reference = Voxelizer(*CONFIGS["pointpillars_kitti"])(scans[0])
    assert np.array_equal(voxels.numpy(), reference[0])


def test_outputs_of_successive_calls_do_not_alias(scans):
    voxelizer = Voxelizer(*CONFIGS["second_kitti"])
    first = voxelizer(scans[0])
    saved = first[0].copy()
    voxelizer(scans[1])
    assert np.array_equal(first[0], saved)


@pytest.mark.parametrize("args, error, message", [
    (([0, 0.1, 0.1], [0, 0, 0, 1, 1, 1], 5, 10), ValueError, "voxel_size must be positive and finite; axis x"),
    (([0.1, -1, 0.1], [0, 0, 0, 1, 1, 1], 5, 10), ValueError, "axis y"),
    (([0.1, 0.1, float("nan")], [0, 0, 0, 1, 1, 1], 5, 10), ValueError, "axis z"),
    (([0.1, 0.1, 0.1], [0, 0, 0, 1, 0, 1], 5, 10), ValueError, "point_cloud_range must have finite min < max; axis y"),
    (([0.1, 0.1, 0.1], [0, 0, 0, 1, 1, 1], 0, 10), ValueError, "max_points_per_voxel must be >= 1"),
    (([0.1, 0.1, 0.1], [0, 0, 0, 1, 1, 1], 5, 0), ValueError, "max_voxels must be >= 1"),
    (([0.1, 0.1], [0, 0, 0, 1, 1, 1], 5, 10), ValueError, "voxel_size must have 3 values"),
    (([0.1, 0.1, 0.1], [0, 0, 0, 1, 1, 1], 5, 2**31), ValueError, r"max_voxels must be below 2\^31, got 2147483648"),
    (([1, 1, 1], [0, 0, 0, 2**31, 1, 1], 5, 10), ValueError, r"between 1 and 2\^31 - 1 cells per axis; axis x"),
])
def test_bad_configurations_raise_clear_errors(args, error, message):
    with pytest.raises(error, match=message):
        Voxelizer(*args)


def test_bad_points_raise_clear_errors():
    voxelizer = Voxelizer([0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 10)
    with pytest.raises(ValueError, match=r"shape \(N, C\) with C >= 3.*got \(4, 2\)"):
        voxelizer(np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        voxelizer(np.zeros((4, 3), np.int32))
    with pytest.raises(ValueError, match="contiguous columns"):
        voxelizer(np.zeros((3, 4), np.float32).T)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        voxelizer([[0, 0, 0]])


class ScanSet(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.voxelizer = Voxelizer(*CONFIGS["second_kitti"])

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return int(self.voxelizer(make_scan(i, beams=16, azimuth_steps=720))[2].sum())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_use_the_voxelizer_after_the_main_process_did(context, no_leaks):
    """The OpenMP-after-fork hazard (a forked child hangs in its first parallel region once its
    parent has run one): the main process voxelizes and runs torch ops, then forked (and
    spawned: the Voxelizer pickles) workers voxelize too."""
    dataset = ScanSet()
    in_main = [dataset[i] for i in range(4)]
    torch.randn(512, 512) @ torch.randn(512, 512)  # an OpenMP parallel region in the parent
    loader = fastload.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=context, timeout=60)
    assert list(loader) == in_main


SHARED_VOXELIZER_CHILD = """
import sys, threading
import numpy as np
from fastload.lidar import Voxelizer
from fastload.lidar.synthetic import make_scan

voxelizer = Voxelizer([0.05, 0.05, 0.1], [0, -40, -3, 70.4, 40, 1], 5, 16000)
scans = [make_scan(seed) for seed in (0, 1)]
want = [voxelizer(scan)[2].sum() for scan in scans]
errors = []

def work(k):
    for i in range(20):
        if voxelizer(scans[(i + k) % 2])[2].sum() != want[(i + k) % 2]:
            errors.append(f"thread {k}, call {i}: wrong result")

threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("; ".join(errors) or "ok")
"""


def test_one_voxelizer_shared_by_two_threads_neither_deadlocks_nor_mixes_results():
    """Each call holds the object's mutex while the GIL comes and goes; a thread that waited
    for that mutex while holding the GIL froze the interpreter. In a child process, so that
    a deadlock fails this test instead of hanging the suite."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        # Under `make sanitize`, LeakSanitizer's tracer crashes now and then at the exit of
        # this two-threaded child (a runtime bug, google/sanitizers#1353), which exits 1 with
        # no report. This test is about the lock and the GIL: ASan and UBSan still check
        # the child; leaks are checked by the other tests of the run.
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    try:
        child = subprocess.run([sys.executable, "-c", SHARED_VOXELIZER_CHILD], check=False, capture_output=True,
                               text=True, timeout=180, cwd=repo_root, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("two threads sharing one Voxelizer did not finish 20 calls each in 180 s: deadlocked")
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "ok"
