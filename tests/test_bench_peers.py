"""The image bench's peers (FFCV, SPDL) do the same work as the other contenders.

They run only where ``make peers`` could install them; elsewhere these tests skip with
the reason ``peers.unavailable`` gives (which the bench prints too).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from fastload.bench import peers
from fastload.bench.timing import time_run
from fastload.image import ImageFolder

#: one solid colour per class: any crop of any image of class c is COLOURS[c]
COLOURS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 240, 30), (10, 10, 10)]


def needs(peer: str):
    reason = peers.unavailable(peer)
    return pytest.mark.skipif(reason is not None, reason=f"{peer} is not usable here ({reason}); `make peers`")


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> ImageFolder:
    """37 JPEGs of odd sizes over 5 classes (the last batch of 8 is partial): the images of
    class c are filled with COLOURS[c], so that a batch shows whether each label stayed
    with its image and whether the channels are in RGB order."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for i in range(37):
        c = i % len(COLOURS)
        os.makedirs(root / f"class_{c}", exist_ok=True)
        size = (int(rng.integers(150, 420)), int(rng.integers(150, 420)))
        Image.new("RGB", size, COLOURS[c]).save(root / f"class_{c}" / f"{i:03d}.jpg", quality=95)
    return ImageFolder(root)


def check_epoch(batches: list, folder: ImageFolder, batch_size: int) -> None:
    """Every image once, in (N, 3, 224, 224) uint8 batches of ``batch_size`` and one
    partial last batch, each label with its own image, RGB."""
    assert [len(labels) for _, labels in batches] == [batch_size] * (len(folder) // batch_size) + [len(folder) % batch_size]
    assert Counter(label for _, labels in batches for label in labels.tolist()) == Counter(folder.targets)
    for images, labels in batches:
        assert images.shape[1:] == (3, 224, 224) and images.dtype == torch.uint8 and labels.dtype == torch.int64
        colours = torch.tensor([COLOURS[label] for label in labels.tolist()], dtype=torch.float32)
        mean = images.float().mean(dim=(2, 3))
        assert (mean - colours).abs().max() < 6, (mean, colours)


def assert_shuffled(epochs: list) -> None:
    """A random order, drawn again each epoch. In the folder's order the first batch holds
    class 0 only (sorted class folders); a shuffled one mixes classes."""
    assert all(len(set(batches[0][1].tolist())) > 1 for batches in epochs)
    assert [b[1].tolist() for b in epochs[0]] != [b[1].tolist() for b in epochs[1]]


@needs("ffcv")
def test_ffcv_contender_gives_every_image_once_with_its_label(colour_folder, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # FFCV sets torch's to its own thread count: the contender restores it
    try:
        loader = peers.FfcvImageLoader(colour_folder, str(tmp_path / "colours.beton"), batch_size=8, threads=2)
        assert torch.get_num_threads() == 1 and 0.005 < loader.bytes_per_pixel < 1.0
        count, first = loader.run(None)
        assert count == 5 and loader.first_run_seconds == first and torch.get_num_threads() == 1
        assert loader.run(None)[0] == 5 and loader.first_run_seconds == first  # the warm-up is kept
    finally:
        torch.set_num_threads(threads)
    # FFCV reuses its batch buffers: each batch is copied before the next one is drawn.
    epochs = [[(images.clone(), labels.clone()) for images, labels in loader.loader] for _ in range(2)]
    for batches in epochs:
        check_epoch(batches, colour_folder, 8)
    assert_shuffled(epochs)


@needs("ffcv")
def test_ffcv_contender_stops_its_thread_when_a_run_ends_early(colour_folder, tmp_path):
    import threading
    import time

    loader = peers.FfcvImageLoader(colour_folder, str(tmp_path / "colours.beton"), batch_size=4, threads=2)
    assert loader.run(2)[0] == 2

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if type(t).__name__ == "EpochIterator"]

    deadline = time.monotonic() + 10
    while readers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers() == []


@needs("ffcv")
def test_ffcv_contender_takes_at_most_numbas_threads(colour_folder, tmp_path):
    import numba

    loader = peers.FfcvImageLoader(colour_folder, str(tmp_path / "colours.beton"), batch_size=8,
                                   threads=numba.config.NUMBA_NUM_THREADS + 3)
    assert loader.threads == numba.config.NUMBA_NUM_THREADS and loader.run(None)[0] == 5


@pytest.fixture
def folder_with_a_bad_file(tmp_path) -> ImageFolder:
    from fastload.bench.images import make_image_folder

    root = make_image_folder(tmp_path / "photos", 12, classes=2)
    (root_path := tmp_path / "photos" / "class_01" / "img_000005.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert root_path.exists()
    return ImageFolder(root)


@needs("ffcv")
def test_ffcv_conversion_names_a_bad_file_instead_of_hanging(folder_with_a_bad_file, tmp_path):
    with pytest.raises(RuntimeError, match=r"1 image\(s\) could not be read: .*class_01/img_000005\.jpg: "):
        peers.FfcvImageLoader(folder_with_a_bad_file, str(tmp_path / "bad.beton"), batch_size=4, threads=2)
    assert not (tmp_path / "bad.beton").exists() and not (tmp_path / "bad.beton.failures").exists()


@needs("ffcv")
def test_ffcv_bytes_per_pixel_is_that_of_the_stored_jpegs(tmp_path):
    from fastload.bench.images import jpeg_statistics, make_image_folder

    root = make_image_folder(tmp_path / "photos", 40, imagenet_like=True)
    loader = peers.FfcvImageLoader(ImageFolder(root), str(tmp_path / "photos.beton"), batch_size=8, threads=2)
    folder_bytes_per_pixel, _ = jpeg_statistics(root)
    # Re-encoded at the folder's own quality (94), the stored JPEGs are about as large.
    assert loader.bytes_per_pixel == pytest.approx(folder_bytes_per_pixel, rel=0.15)
    low = peers.FfcvImageLoader(ImageFolder(root), str(tmp_path / "low.beton"), batch_size=8, threads=2, quality=50)
    assert low.bytes_per_pixel < 0.5 * loader.bytes_per_pixel


@needs("spdl")
def test_spdl_contender_gives_every_image_once_with_its_label(colour_folder):
    loader = peers.SpdlImageLoader(colour_folder, batch_size=8, threads=2)
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        check_epoch(batches, colour_folder, 8)
    assert_shuffled(epochs)
    assert time_run(loader, 2)[0] == 2


@needs("spdl")
def test_spdl_contender_fails_on_a_bad_file_instead_of_skipping_it(folder_with_a_bad_file):
    loader = peers.SpdlImageLoader(folder_with_a_bad_file, batch_size=4, threads=2)
    with pytest.raises(RuntimeError, match=r"^SPDL could not load .*class_01/img_000005\.jpg: "):
        list(loader)


@needs("spdl")
def test_spdl_crops_and_flips_as_torchvision_draws_them(tmp_path):
    """The filter graph crops the box torchvision's RandomResizedCrop draws (same seed,
    same box) and flips when a draw of torch.rand(1) < 0.5, as RandomHorizontalFlip."""
    import spdl.io
    from PIL import Image
    from torchvision import transforms as v1

    path = tmp_path / "gradient.png"  # lossless, so that the crop can be compared exactly
    x = np.arange(250, dtype=np.uint8)[None, :].repeat(200, 0)
    Image.fromarray(np.stack([x, 255 - x, np.full_like(x, 128)], axis=2)).save(path)
    packets = spdl.io.demux_image(str(path))
    for seed in range(8):
        torch.manual_seed(seed)
        description = peers._crop_filter(packets, 224, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        top, left, height, width = v1.RandomResizedCrop.get_params(torch.empty(0, 200, 250), [0.08, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        assert description.startswith(f"crop={width}:{height}:{left}:{top},scale=224:224:")
        assert ("hflip" in description) == flip
        image = spdl.io.to_torch(spdl.io.convert_frames(spdl.io.decode_packets(spdl.io.demux_image(str(path)),
                                                                                filter_desc=description)))
        red = image[0, :, 0].float()  # red rises with x: left to right unless flipped
        assert (red[-1] < red[0]) == flip and abs(float(max(red[0], red[-1])) - (left + width - 1)) < 3
        assert abs(float(min(red[0], red[-1])) - left) < 3


def test_peers_status_command():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "fastload.bench.peers"], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ffcv", "spdl"]
    expected = {peer: peers.unavailable(peer) or "ready" for peer in ("ffcv", "spdl")}
    assert lines == [f"{peer}: {state}" for peer, state in expected.items()]
    assert result.returncode == (0 if set(expected.values()) == {"ready"} else 1)


def test_unavailable_names_why_a_peer_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)  # an import that fails, as without the package
    monkeypatch.setitem(sys.modules, "spdl", None)
    assert peers.unavailable("ffcv").startswith("ModuleNotFoundError: import of ffcv halted")
    assert peers.unavailable("spdl").startswith("ModuleNotFoundError: import of spdl halted")
