"""DaliImageLoader with real DALI CPU pipelines (the GPU pipeline needs CUDA: skipped here)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fastload
from fastload.bench.images import make_image_folder
from fastload.image import ImageFolder, RandomResizedCropDecode
from fastload.image.dali import DaliImageLoader, dali_available

from .helpers import needs_cuda

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ImageFolder(make_image_folder(tmp_path_factory.mktemp("dali"), 42, classes=3))


@pytest.mark.parametrize("policy, sizes", [("partial", [16, 16, 10]), ("drop", [16, 16]), ("fill", [16, 16, 16])])
def test_last_batch_policy_and_len(folder, policy, sizes):
    loader = DaliImageLoader(folder, 16, device="cpu", last_batch=policy)
    for _ in range(2):  # two epochs: the iterator resets itself
        batches = list(loader)
        assert [len(b[1]) for b in batches] == sizes == [b[0].shape[0] for b in batches]
        assert len(loader) == len(sizes)


def test_batch_layout_matches_fastload_loader(folder):
    dali_images, dali_labels = next(iter(DaliImageLoader(folder, 8, device="cpu", size=96)))
    ours = fastload.DataLoader(ImageFolder(folder.root, transform=RandomResizedCropDecode(96)), batch_size=8)
    images, labels = next(iter(ours))
    assert dali_images.shape == images.shape == (8, 3, 96, 96)
    assert dali_images.dtype == images.dtype == torch.uint8 and dali_labels.dtype == labels.dtype == torch.int64
    assert dali_images.float().std() > 10  # real pictures, not blanks


def test_every_label_once_per_epoch(folder):
    labels = sorted(int(x) for _, batch_labels in DaliImageLoader(folder, 8, device="cpu") for x in batch_labels)
    assert labels == sorted(folder.targets)


def test_shards_are_disjoint_and_cover_the_files(folder):
    files = [(path, i) for i, (path, _) in enumerate(folder.samples)]  # label = file index
    seen = []
    for shard in range(3):
        loader = DaliImageLoader(files, 8, device="cpu", shard_id=shard, num_shards=3, shuffle=False)
        indices = [int(x) for _, labels in loader for x in labels]
        assert len(indices) == loader.shard_size and len(loader) == math.ceil(loader.shard_size / 8)
        seen.append(set(indices))
    assert set.union(*seen) == set(range(42)) and sum(len(s) for s in seen) == 42


def test_early_break_then_a_full_epoch(folder):
    loader = DaliImageLoader(folder, 8, device="cpu")
    for _ in loader:
        break
    assert sum(len(labels) for _, labels in loader) == 42


def test_auto_device_falls_back_to_cpu_with_one_warning(folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = DaliImageLoader(folder, 8, device="auto")
    assert loader.device == "cpu" and any("CPU pipeline" in str(w.message) for w in caught)


def test_bad_arguments():
    with pytest.raises(ValueError, match="last_batch"):
        DaliImageLoader([("x.jpg", 0)], 4, last_batch="pad")
    with pytest.raises(ValueError, match="no images"):
        DaliImageLoader([], 4)
    with pytest.raises(ValueError, match="shard_id"):
        DaliImageLoader([("x.jpg", 0)], 4, shard_id=2, num_shards=2)


@needs_cuda
def test_the_gpu_pipeline_decodes_with_nvjpeg_onto_the_gpu(folder):
    gpu = DaliImageLoader(folder, 8, device="gpu")
    cpu = DaliImageLoader(folder, 8, device="cpu")
    assert gpu.device == "gpu"
    gpu_batches, cpu_batches = list(gpu), list(cpu)
    assert len(gpu_batches) == len(cpu_batches)
    for (images, labels), (cpu_images, cpu_labels) in zip(gpu_batches, cpu_batches):
        assert images.device.type == "cuda" and images.dtype == cpu_images.dtype
        assert images.shape == cpu_images.shape
    assert sorted(torch.cat([labels.cpu() for _, labels in gpu_batches]).tolist()) == \
        sorted(torch.cat([labels.cpu() for _, labels in cpu_batches]).tolist())
