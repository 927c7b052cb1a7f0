"""PadCollator (text) and VoxelCollator (point clouds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastload
from fastload import PadCollator, VoxelCollator

from .datasets import Ragged


@pytest.mark.parametrize("make", [list, np.array, torch.tensor])
def test_plain_sequences_become_input_ids_mask_and_lengths(make):
    batch = PadCollator()([make([1, 2, 3]), make([4]), make([5, 6])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["lengths"].tolist() == [3, 1, 2]
    assert batch["input_ids"].dtype == torch.int64


def test_dict_samples_pad_per_key_and_labels_with_minus_100():
    samples = [
        {"input_ids": [7, 8, 9], "labels": [1, 2, 3], "score": 0.5, "name": "a"},
        {"input_ids": [7], "labels": [4], "score": 1.5, "name": "b"},
    ]
    batch = PadCollator(padding_values={"input_ids": 1})(samples)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [7, 1, 1]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert batch["score"].dtype == torch.float64 and batch["name"] == ["a", "b"]


def test_left_padding_multiple_of_and_truncation():
    batch = PadCollator(padding_side="left", pad_to_multiple_of=4)([[1, 2, 3, 4, 5], [6]])
    assert batch["input_ids"].tolist() == [[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 0, 6]]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1]]
    truncated = PadCollator(max_length=2)([[1, 2, 3], [4]])
    assert truncated["input_ids"].tolist() == [[1, 2], [4, 0]] and truncated["lengths"].tolist() == [2, 1]


def test_feature_sequences_pad_along_time():
    batch = PadCollator(padding_value=-1.0)([np.ones((3, 2), np.float32), np.zeros((1, 2), np.float32)])
    assert batch["input_ids"].shape == (2, 3, 2) and batch["input_ids"][1, 1:].eq(-1).all()


@pytest.mark.parametrize("bad, message", [
    ([[[1, 2], [3]], [[1]]], "key 'input_ids' of sample 0 cannot be padded"),
    ([np.ones((2, 3)), np.ones((2, 4))], "sample 1 has shape \\(2, 4\\)"),
])
def test_clear_errors_for_input_it_cannot_pad(bad, message):
    with pytest.raises(ValueError, match=message):
        PadCollator()(bad)


def test_pad_collator_through_the_worker_pool():
    loader = fastload.DataLoader(Ragged(), batch_size=4, num_workers=2, collate_fn=PadCollator())
    batches = list(loader)
    assert batches[0]["input_ids"].shape == (4, 4, 4) and batches[0]["lengths"].tolist() == [1, 2, 3, 4]


def voxel_sample(m, k, p=5, c=4):
    return {
        "voxels": np.arange(m * p * c, dtype=np.float32).reshape(m, p, c),
        "coords": np.arange(m * 3, dtype=np.int32).reshape(m, 3),
        "num_points": np.full(m, 2, np.int32),
        "gt_boxes": np.ones((k, 7), np.float32),
        "frame_id": f"{m:06d}",
    }


def test_voxel_concat_prepends_the_batch_index():
    batch = VoxelCollator("concat")([voxel_sample(3, 2), voxel_sample(2, 0)])
    assert batch["voxels"].shape == (5, 5, 4) and batch["num_points"].shape == (5,)
    assert batch["coords"].dtype == torch.int32 and batch["coords"].shape == (5, 4)
    assert batch["coords"][:, 0].tolist() == [0, 0, 0, 1, 1]
    assert batch["coords"][3, 1:].tolist() == [0, 1, 2]
    assert batch["gt_boxes"].shape == (2, 2, 7) and batch["gt_boxes_mask"].tolist() == [[True, True], [False, False]]
    assert batch["frame_id"] == ["000003", "000002"]


def test_voxel_pad_mode_masks_padding():
    batch = VoxelCollator("pad")([voxel_sample(3, 1), voxel_sample(1, 2)])
    assert batch["voxels"].shape == (2, 3, 5, 4) and batch["coords"].shape == (2, 3, 3)
    assert batch["voxel_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["voxels"][1, 1:].eq(0).all()


def test_voxel_errors_name_the_sample():
    bad = voxel_sample(3, 1)
    bad["coords"] = bad["coords"][:2]
    with pytest.raises(ValueError, match="sample 1 has voxels \\(3, 5, 4\\), coords \\(2, 3\\)"):
        VoxelCollator()([voxel_sample(2, 1), bad])
    with pytest.raises(ValueError, match="sample 0 lacks \\['num_points'\\]"):
        VoxelCollator()([{"voxels": np.ones((1, 1, 1)), "coords": np.ones((1, 3))}])
    with pytest.raises(ValueError, match="mode"):
        VoxelCollator("stack")


def test_pad_collator_leaves_lengths_out_for_models_that_take_the_batch_as_arguments():
    batch = PadCollator(return_lengths=False)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4],
                                                                                               "labels": [4]}])
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
