"""fastload.image: ImageFolder semantics, fused decode agreement, decoders, bad files."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zlib

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

from .jpeg_files import bomb, garble


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
    truncated, garbled, garbage, not_image = files[3][0], files[4][0], files[6][0], files[9][0]
    with open(truncated, "rb") as f:
        head = f.read()[: 2000]
    with open(truncated, "wb") as f:
        f.write(head)
    with open(garbled, "rb") as f:
        content = f.read()
    with open(garbled, "wb") as f:
        f.write(garble(content, seed=0))
    with open(garbage, "r+b") as f:  # over the header's tables
        f.seek(400)
        f.write(np.random.default_rng(0).bytes(3000))
    with open(not_image, "wb") as f:
        f.write(b"this is a text file, not a JPEG" * 10)
    return root, {3: truncated, 4: garbled, 6: garbage, 9: not_image}


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


# --- corrupt data: what each decoder detects (fastload.image.decoders' docstring) ---

def full_decoders() -> list[str]:
    return [n for n in decoders.DECODERS if decoders.available(n)] + ["auto"]


@pytest.mark.parametrize("seed", range(4))
def test_garbled_scan_fails_every_fused_crop(photos, seed):
    """A crop above the garbled rows decodes none of them, yet the file is corrupt: every
    draw of the crop must fail, not only those that cover the damage."""
    data = garble(ImageFolder(photos).read(seed), seed)
    for transform in (RandomResizedCropDecode(224), RandomResizedCropDecode(64), ResizeCenterCropDecode(224)):
        for draw in range(15):
            torch.manual_seed(draw)
            with pytest.raises(ImageDecodeError, match="Corrupt JPEG data"):
                transform(data)


def test_truncation_fails_every_fused_crop(photos):
    data = ImageFolder(photos).read(2)
    data = data[: len(data) * 3 // 4]
    for transform in (RandomResizedCropDecode(224), RandomResizedCropDecode(64), ResizeCenterCropDecode(224)):
        for draw in range(15):
            torch.manual_seed(draw)
            with pytest.raises(ImageDecodeError, match="Premature end of JPEG file"):
                transform(data)


@pytest.mark.parametrize("name", ["fastload", "simplejpeg", "auto"])
def test_marker_free_garbage_in_the_scan_raises(photos, name):
    """Garbage without 0xFF holds no marker: only the end of the scan shows it (its data no
    longer ends where the image does)."""
    ds = ImageFolder(photos)
    for index in range(0, len(ds), 4):
        for seed in range(2):
            with pytest.raises(ImageDecodeError, match="Corrupt JPEG data|Premature end"):
                decode(garble(ds.read(index), seed, markers=False), name)


@pytest.mark.parametrize("name", full_decoders())
def test_every_decoder_raises_for_a_truncated_file(photos, name):
    data = ImageFolder(photos).read(1)
    with pytest.raises(ImageDecodeError):
        decode(data[: len(data) // 2], name)


def test_torchvision_and_pillow_return_marker_free_garbage_undetected(photos):
    """The documented limit of those backends: libjpeg's corrupt-data warnings are not errors there."""
    data = garble(ImageFolder(photos).read(0), 0, markers=False)
    for name in ("torchvision", "pillow"):
        assert decode(data, name).shape[0] == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_on_error_skip_leaves_out_corrupt_files(broken_folder, num_workers, no_leaks):
    root, bad = broken_folder
    ds = ImageFolder(root, transform=RandomResizedCropDecode(64))
    loader = fastload.DataLoader(ds, batch_size=4, num_workers=num_workers, on_error="skip",
                                 generator=torch.Generator().manual_seed(0))
    assert sum(len(labels) for _, labels in loader) == len(ds) - len(bad)
    assert sorted(failure.index for failure in loader.errors) == sorted(bad)
    assert all(bad[failure.index] in failure.error for failure in loader.errors)


# --- decompression bombs: the header's size against MAX_IMAGE_PIXELS, before any decoder ---

@pytest.mark.parametrize("name", [*full_decoders(), "fused"])
def test_an_image_over_max_image_pixels_is_refused(photos, name, monkeypatch):
    data = ImageFolder(photos).read(0)
    width, height = Image.open(io.BytesIO(data)).size
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", width * height - 1)
    with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS .*; raise that limit, or set it to None"):
        if name == "fused":
            RandomResizedCropDecode(64)(data)
        else:
            decode(data, name)


def test_the_limit_applies_to_non_jpeg_images(monkeypatch):
    png = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(png, "PNG")
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", 40 * 50 - 1)
    with pytest.raises(ImageDecodeError, match="claims 50x40 = 2,000 pixels, more than .*MAX_IMAGE_PIXELS = 1,999"):
        decode(png.getvalue())


def test_pillow_keeps_its_own_decompression_bomb_check(monkeypatch):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    size = (20000).to_bytes(4, "big") * 2  # 20000x20000: past twice PIL.Image.MAX_IMAGE_PIXELS, where Pillow raises
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size + bytes([8, 2, 0, 0, 0]))  # 8-bit RGB
           + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageDecodeError, match="could be decompression bomb"):
        decode(png)


def test_an_image_at_the_limit_decodes_and_none_disables_the_limit(photos, monkeypatch):
    data = ImageFolder(photos).read(0)
    width, height = Image.open(io.BytesIO(data)).size
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", width * height)
    assert decode(data).shape == (3, height, width)
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", None)
    decoders.check_size(60000, 60000)


def test_image_folder_names_the_file_over_the_limit(photos, monkeypatch):
    ds = ImageFolder(photos, transform=RandomResizedCropDecode(64))
    width, height = Image.open(ds.path(5)).size
    monkeypatch.setattr(decoders, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError) as info:
        ds[5]
    assert str(info.value).startswith(f"{ds.path(5)}: the image claims {width}x{height} = {width * height:,} pixels")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BOMB_CHILD = """
import json, resource, sys
import torch
import fastload
from fastload.image import ImageFolder, RandomResizedCropDecode, ResizeCenterCropDecode, decode

# Room for what is loaded, not for a 60000x60000 image: a decoder that allocated for it
# fails here at once instead of taking 11 to 17 GB.
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, resource.RLIM_INFINITY))

root, names = sys.argv[1], sys.argv[2].split(",")
data = open(f"{root}/bombs/bomb.jpg", "rb").read()
calls = {name: (lambda name=name: decode(data, name)) for name in names}
calls["fused"] = lambda: RandomResizedCropDecode(224)(data)
calls["fused center"] = lambda: ResizeCenterCropDecode(224)(data)
gpu = RandomResizedCropDecode(224)
gpu.gpu_decode = True  # the worker's part of the CUDA path: header and crop only
calls["gpu worker"] = lambda: gpu(data)
calls["image folder"] = lambda: ImageFolder(root, transform=RandomResizedCropDecode(224))[0]
messages = {}
for case, call in calls.items():
    try:
        call()
        messages[case] = "decoded"
    except Exception as exc:
        messages[case] = f"{type(exc).__name__}: {exc}"
print(json.dumps(messages))
"""


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="RLIMIT_AS cannot be set under AddressSanitizer, which reserves terabytes of shadow memory")
def test_a_decompression_bomb_is_refused_from_its_header_everywhere(tmp_path):
    """A 629-byte JPEG that claims 60000x60000 (10.8 GB of RGB): every decoder, the fused
    transforms and the GPU path's worker refuse it before allocating."""
    (tmp_path / "bombs").mkdir()
    (tmp_path / "bombs" / "bomb.jpg").write_bytes(bomb())
    child = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(tmp_path), ",".join(full_decoders())], check=False,
                           capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert child.returncode == 0, child.stderr
    messages = json.loads(child.stdout)
    expected = "ImageDecodeError: .*the image claims 60000x60000 = 3,600,000,000 pixels, more than " \
               "fastload.image.decoders.MAX_IMAGE_PIXELS = 89,478,485"
    for case, message in messages.items():
        assert re.search(expected, message), f"{case}: {message}"
    assert messages["image folder"].startswith(f"ImageDecodeError: {tmp_path / 'bombs' / 'bomb.jpg'}: ")
