"""LidarDataset: augmentations, voxelization in workers, VoxelCollator batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastload
from fastload.lidar import VOXELIZER_PRESETS, PointCloudError, Voxelizer
from fastload.lidar.dataset import LidarDataset, RandomFlip, RandomRotation, RandomScaling, RangeCrop, ShufflePoints
from fastload.lidar.synthetic import make_scan

PILLARS = VOXELIZER_PRESETS["pointpillars_kitti"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    labels = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    for i in range(6):
        make_scan(i, beams=16, azimuth_steps=360).tofile(root / f"{i:06d}.bin")
        boxes = np.concatenate([rng.uniform([0, -20, -1.7], [40, 20, -0.5], (i % 3 + 1, 3)),
                                np.tile([[4.0, 1.8, 1.5]], (i % 3 + 1, 1)), rng.uniform(-3, 3, (i % 3 + 1, 1))], axis=1)
        np.save(labels / f"{i:06d}.npy", boxes.astype(np.float32))
    return root, labels


def sample_with_box():
    points = np.array([[10.0, 2.0, -1.0, 0.5], [20.0, -5.0, 0.0, 0.1]], np.float32)
    boxes = np.array([[10.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3]], np.float32)
    return {"points": points, "gt_boxes": boxes}


def test_flip_mirrors_points_and_boxes():
    out = RandomFlip(p=1.0)(sample_with_box())
    assert out["points"][:, 1].tolist() == [-2.0, 5.0]
    assert out["gt_boxes"][0, 1] == -2.0 and out["gt_boxes"][0, 6] == pytest.approx(-0.3)


def test_rotation_moves_boxes_with_their_points_and_keeps_distances():
    torch.manual_seed(0)
    before = sample_with_box()
    out = RandomRotation(math.pi / 4)(sample_with_box())
    assert np.allclose(np.linalg.norm(out["points"][:, :2], axis=1), np.linalg.norm(before["points"][:, :2], axis=1))
    assert np.allclose(out["gt_boxes"][0, :2], out["points"][0, :2], atol=1e-5)  # the box sat on point 0
    angle = out["gt_boxes"][0, 6] - 0.3
    expected = math.atan2(before["points"][0, 1], before["points"][0, 0]) + angle
    assert math.atan2(out["points"][0, 1], out["points"][0, 0]) == pytest.approx(expected, abs=1e-5)


def test_scaling_and_crop():
    torch.manual_seed(1)
    out = RandomScaling((2.0, 2.0))(sample_with_box())
    assert out["points"][0, :3].tolist() == [20.0, 4.0, -2.0] and out["gt_boxes"][0, 3] == 8.0
    cropped = RangeCrop([0, -3, -3, 15, 3, 1])(sample_with_box())
    assert len(cropped["points"]) == 1 and len(cropped["gt_boxes"]) == 1
    shuffled = ShufflePoints()(sample_with_box())
    assert sorted(shuffled["points"][:, 0].tolist()) == [10.0, 20.0]


def loader(folder, num_workers, **kwargs):
    root, labels = folder
    dataset = LidarDataset(root, labels_root=labels, voxelizer=Voxelizer(*PILLARS),
                           transforms=[RandomFlip(), RandomRotation(), RandomScaling(), RangeCrop(PILLARS[1]),
                                       ShufflePoints()])
    return fastload.DataLoader(dataset, batch_size=3, num_workers=num_workers, collate_fn=fastload.VoxelCollator(),
                               generator=torch.Generator().manual_seed(0), seed_per_sample=True, **kwargs)


def test_voxelized_batches_through_workers(folder):
    batches = list(loader(folder, 2))
    assert len(batches) == 2
    batch = batches[0]
    assert batch["voxels"].shape[1:] == (32, 4) and batch["coords"].shape[1] == 4
    assert set(batch["coords"][:, 0].tolist()) == {0, 1, 2}
    assert batch["gt_boxes"].shape == (3, 3, 7) and batch["gt_boxes_mask"].sum() <= 6
    assert batch["frame_id"] == ["000000", "000001", "000002"]


def test_augmented_batches_do_not_depend_on_worker_count(folder):
    for a, b in zip(loader(folder, 0), loader(folder, 2)):
        for key in ("voxels", "coords", "num_points", "gt_boxes"):
            assert torch.equal(a[key], b[key])


def test_missing_labels_and_bad_scans_are_named(folder, tmp_path):
    root, _ = folder
    with pytest.raises(FileNotFoundError, match="no label file .*000000.npy"):
        LidarDataset(root, labels_root=tmp_path)
    (tmp_path / "000000.bin").write_bytes(b"\x00" * 10)
    dataset = LidarDataset(tmp_path)
    with pytest.raises(PointCloudError, match="000000.bin"):
        next(iter(fastload.DataLoader(dataset, batch_size=None, num_workers=1)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .bin/.pcd/.ply scans"):
        LidarDataset(empty)
