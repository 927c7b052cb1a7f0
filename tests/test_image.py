"""fastload.image: ImageFolder semantics, fused decode agreement, decoders, bad files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import fastload
from fastload.bench.images import make_image_folder
from fastload.image import ImageDecodeError, ImageFolder, RandomResizedCropDecode, ResizeCenterCropDecode, decode
from fastload.image import decoders


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("photos"), 40, classes=4)


def test_image_folder_matches_torchvision(photos):
    ours, theirs = ImageFolder(photos), torchvision.datasets.ImageFolder(photos)
    assert ours.classes == theirs.classes and ours.class_to_idx == theirs.class_to_idx
    assert ours.samples == theirs.samples and ours.targets == theirs.targets and len(ours) == len(theirs)
    data, target = ours[7]
    assert isinstance(data, bytes) and target == theirs.targets[7]
    with open(theirs.samples[7][0], "rb") as f:
        assert f.read() == data


def same_geometry_reference(data: bytes, seed: int, size: int, scale) -> torch.Tensor:
    """The unfused reference: full decode, then v2's crop and flip with the same draws."""
    torch.manual_seed(seed)
    pipeline = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()])
    return pipeline(decode(data, "pillow"))


def test_fused_random_resized_crop_equals_unfused_at_full_scale(photos):
    ds, fused = ImageFolder(photos), RandomResizedCropDecode(224)
    for i in range(len(ds)):
        data = ds.read(i)
        torch.manual_seed(i)
        out = fused(data)
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8 and out.is_contiguous()
        diff = (out.int() - same_geometry_reference(data, i, 224, (0.08, 1.0)).int()).abs().float()
        assert diff.mean() < 0.05, f"image {i}: mean |diff| {diff.mean():.3f}"


def test_fused_random_resized_crop_with_dct_scaling_stays_close(photos):
    """Small outputs from large crops decode at 1/2..1/8 scale: lossy, but close."""
    ds, fused = ImageFolder(photos), RandomResizedCropDecode(64, scale=(0.8, 1.0))
    means = []
    for i in range(len(ds)):
        data = ds.read(i)
        torch.manual_seed(i)
        means.append((fused(data).int() - same_geometry_reference(data, i, 64, (0.8, 1.0)).int()).abs().float().mean())
    assert float(np.mean(means)) < 4.0 and max(means) < 8.0, means


def test_fused_center_crop_equals_resized_crop_of_its_box(photos):
    ds, fused = ImageFolder(photos), ResizeCenterCropDecode(224)
    for i in range(0, len(ds), 5):
        data = ds.read(i)
        full = decode(data, "pillow")
        top, left, h, w = fused._crop_box(full.shape[1], full.shape[2])
        reference = F.resized_crop(full, top, left, h, w, [224, 224], antialias=True)
        assert (fused(data).int() - reference.int()).abs().float().mean() < 0.05
        # and the box is the one Resize(256) + CenterCrop(224) looks at, up to resampling
        two_step = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(full)
        assert (fused(data).int() - two_step.int()).abs().float().mean() < 6


@pytest.mark.parametrize("name", [n for n in decoders.DECODERS if decoders.available(n)])
def test_every_decoder_decodes_the_same_image(photos, name):
    data = ImageFolder(photos).read(3)
    reference = decode(data, "pillow")
    out = decode(data, name)
    assert out.shape == reference.shape and out.dtype == torch.uint8
    assert (out.int() - reference.int()).abs().float().mean() < 1.5


def test_png_and_grayscale_fall_back_to_pillow():
    png = io.BytesIO()
    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 251).save(png, "PNG")
    for name in ("auto", "simplejpeg", "fastload"):
        assert decode(png.getvalue(), name).shape == (3, 48, 64)
    assert RandomResizedCropDecode(32)(png.getvalue()).shape == (3, 32, 32)


def test_auto_picks_an_available_decoder_and_unknown_names_fail():
    assert decoders.resolve("auto") in decoders.DECODERS
    with pytest.raises(ValueError, match="unknown decoder 'nvjpeg'"):
        decode(b"", "nvjpeg")
    assert decoders.pillow_flavour().startswith(("pillow ", "pillow-simd "))


@pytest.fixture
def broken_folder(tmp_path):
    root = make_image_folder(tmp_path / "broken", 12, classes=2)
    files = ImageFolder(root).samples
    truncated, garbage, not_image = files[3][0], files[6][0], files[9][0]
    with open(truncated, "rb") as f:
        head = f.read()[: 2000]
    with open(truncated, "wb") as f:
        f.write(head)
    with open(garbage, "r+b") as f:
        f.seek(400)
        f.write(os.urandom(3000))
    with open(not_image, "wb") as f:
        f.write(b"this is a text file, not a JPEG" * 10)
    return root, {3: truncated, 6: garbage, 9: not_image}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_files_raise_naming_file_and_index(broken_folder, num_workers, no_leaks):
    root, bad = broken_folder
    ds = ImageFolder(root, transform=RandomResizedCropDecode(64))
    for index, path in bad.items():
        loader = fastload.DataLoader(ds, batch_size=1, sampler=[index], num_workers=num_workers)
        with pytest.raises(ImageDecodeError) as info:
            next(iter(loader))
        text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
        assert path in text, text
        assert f"sample index {index}" in text


def test_image_folder_through_the_pool_with_seed_per_sample(photos):
    def run(num_workers):
        ds = ImageFolder(photos, transform=RandomResizedCropDecode(96))
        loader = fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=num_workers,
                                     generator=torch.Generator().manual_seed(0), seed_per_sample=True)
        return list(loader)

    reference = run(0)
    for a, b in zip(reference, run(2)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert reference[0][0].shape == (8, 3, 96, 96)
