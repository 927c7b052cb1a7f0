"""NOTE [ GPU decode ]: workers draw crops, the main process decodes the batch."""

from __future__ import annotations

import warnings

import pytest
import torch

import fastload
from fastload.bench.images import make_image_folder
from fastload.image import EncodedCrop, ImageFolder, RandomResizedCropDecode
from fastload.device import cuda_usable

from .helpers import needs_cuda


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("gpu"), 24, classes=2)


def loader_for(root, transform, num_workers=2):
    return fastload.DataLoader(ImageFolder(root, transform=transform), batch_size=8, num_workers=num_workers,
                               generator=torch.Generator().manual_seed(0), shuffle=True, seed_per_sample=True,
                               batch_transform=transform.finish_batch)


@pytest.mark.skipif(cuda_usable(), reason="checks the fallback without CUDA")
def test_without_cuda_the_transform_decodes_in_workers_and_says_so_once(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transform = RandomResizedCropDecode(64, device="cuda")
    assert len([w for w in caught if "CUDA is not available" in str(w.message)]) == 1
    images, labels = next(iter(loader_for(root, transform)))
    assert images.shape == (8, 3, 64, 64) and images.device.type == "cpu"


def test_deferred_decode_equals_worker_decode(root):
    """The deferral path (EncodedCrop through the pool, collated as a list, finished by
    batch_transform) run with torchvision's CPU decoder, against decoding in the workers."""
    in_workers = RandomResizedCropDecode(64, decoder="torchvision")
    deferred = RandomResizedCropDecode(64, decoder="torchvision")
    deferred.gpu_decode = True  # the CUDA path, with decode_jpeg on deferred.device (the CPU here)
    sample, _ = ImageFolder(root, transform=deferred)[0]
    assert isinstance(sample, EncodedCrop) and sample.data.dtype == torch.uint8
    for (a, la), (b, lb) in zip(loader_for(root, in_workers), loader_for(root, deferred)):
        assert torch.equal(la, lb)
        assert a.shape == b.shape and (a.int() - b.int()).abs().float().mean() < 0.5


@needs_cuda
def test_gpu_decode_gives_device_batches_close_to_cpu_decode(root):
    cpu = next(iter(loader_for(root, RandomResizedCropDecode(96))))
    gpu = next(iter(loader_for(root, RandomResizedCropDecode(96, device="cuda"))))
    assert gpu[0].device.type == "cuda" and gpu[0].dtype == torch.uint8
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert (cpu[0].int() - gpu[0].cpu().int()).abs().float().mean() < 3.0  # nvJPEG vs libjpeg-turbo IDCT
