"""Benchmark scenarios: a generated dataset and the loaders to compare on it.

The first contender of every scenario is the baseline (torch's DataLoader); the others
are built with the same arguments unless the difference is the point (bucketing).
fastload's loaders run with ``telemetry=True``, for the per-stage breakdown; its cost is
measured in the ``overhead`` scenario (``fastload`` vs ``fastload+telemetry``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

import fastload
from fastload.text import TokenSequences, padding_fraction

from .timing import time_run


class PreDecodedImages(tud.Dataset):
    """``length`` samples of (uint8 CHW image, int label) served from an in-memory array.

    Only ``distinct`` images are stored; sample ``i`` is image ``i % distinct``. The
    dataset itself costs almost nothing per sample, so a loader's own overhead
    (moving and batching data between processes) is what gets measured.
    """

    def __init__(self, length: int, distinct: int = 256, shape: tuple[int, ...] = (3, 224, 224), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(distinct, *shape), dtype=np.uint8)
        self.labels = rng.integers(0, 1000, size=distinct, dtype=np.int64)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = index % len(self.images)
        return torch.from_numpy(self.images[i]), int(self.labels[i])


def lognormal_corpus(sequences: int, median_length: int = 100, max_length: int = 2048, seed: int = 0) -> TokenSequences:
    """Token sequences with log-normal lengths (a long tail, like real text), random ids."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_length), 0.9, sequences), 1, max_length).astype(np.int64)
    offsets = np.zeros(sequences + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenSequences(rng.integers(1, 32000, size=int(offsets[-1]), dtype=np.int32), offsets)


@dataclass
class Contender:
    """One loader under test. ``run(batches)`` times one run of it: in this process for a
    ``loader``, or elsewhere (see ``remote.py``)."""

    loader: Any = None
    #: extra columns for the table, e.g. {"padding": "3.1%"}
    notes: dict[str, str] = field(default_factory=dict)
    run: Callable[[int | None], tuple[int, float]] | None = None

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = functools.partial(time_run, self.loader)


@dataclass
class BenchConfig:
    """What the command line chose, for every scenario."""

    batch_size: int
    workers: int
    #: the user's own ImageFolder (``--data``), else None: generated in ``scratch``
    data: str | None
    #: the user's own folder of lidar scans (``--scans``), else None: generated in ``scratch``
    scans: str | None
    #: a temporary directory for generated data, removed at exit
    scratch: str
    #: decoder timings and the in-run ceiling are measured over this many images
    probe_images: int = 200
    #: timed runs per contender (also the calls per implementation in the voxelizer table)
    repeats: int = 5


@dataclass
class ScenarioSetup:
    #: the loaders to compare, baseline first
    contenders: dict[str, Contender]
    #: lines printed under the table (decoder costs, ceilings); may use measured rates
    report: Callable[[dict[str, float]], list[str]] = lambda rates: []
    close: Callable[[], None] = lambda: None
    #: (a, b, what): print a's batches/s over b's, repeat by repeat, as "what"
    compare: list[tuple[str, str, str]] = field(default_factory=list)
    #: samples in one epoch, for scenarios timed an epoch at a time (its last batch may be
    #: short); other runs hold batches x batch size
    epoch_samples: int | None = None


@dataclass
class Scenario:
    name: str
    description: str
    #: batches per timed run unless --batches says otherwise (None: one epoch)
    default_batches: int | None
    build: Callable[[BenchConfig, int | None], ScenarioSetup]
    #: samples per batch unless --batch-size says otherwise
    default_batch_size: int = 64


def _overhead(config: BenchConfig, batches: int | None) -> ScenarioSetup:
    dataset = PreDecodedImages((batches or 200) * config.batch_size)
    kwargs = dict(batch_size=config.batch_size, num_workers=config.workers, persistent_workers=config.workers > 0)
    return ScenarioSetup({
        "torch": Contender(tud.DataLoader(dataset, **kwargs)),
        "fastload": Contender(fastload.DataLoader(dataset, **kwargs)),
        # The cost of telemetry, measured where it would show most: the loader's own overhead.
        "fastload+telemetry": Contender(fastload.DataLoader(dataset, telemetry=True, **kwargs)),
    }, compare=[("fastload+telemetry", "fastload", "telemetry on / off")])


TEXT_SEQUENCES = 100_000


def _text(config: BenchConfig, batches: int | None) -> ScenarioSetup:
    corpus = lognormal_corpus(TEXT_SEQUENCES)
    lengths, batch_size = corpus.lengths, config.batch_size
    kwargs = dict(num_workers=config.workers, persistent_workers=config.workers > 0, collate_fn=fastload.PadCollator())
    random_batches = np.array_split(np.random.default_rng(0).permutation(len(corpus)), len(corpus) // batch_size)
    random_note = {"padding": f"{padding_fraction(random_batches, lengths):.1%}"}
    bucket = fastload.BucketBatchSampler(lengths, batch_size, seed=0)
    bucket_note = {"padding": f"{padding_fraction(list(bucket), lengths):.1%}"}
    return ScenarioSetup({
        "torch": Contender(tud.DataLoader(corpus, batch_size=batch_size, shuffle=True, **kwargs), random_note),
        "fastload": Contender(fastload.DataLoader(corpus, batch_size=batch_size, shuffle=True, telemetry=True, **kwargs),
                              random_note),
        "fastload+bucket": Contender(fastload.DataLoader(corpus, batch_sampler=bucket, telemetry=True, **kwargs),
                                     bucket_note),
    })


IMAGE_SIZE = 224
GENERATED_IMAGES = 2000


def torch_image_loader(root: str, batch_size: int, workers: int) -> tud.DataLoader:
    """torch's standard ImageNet training pipeline: Pillow decode, v2 crop + flip, PILToTensor."""
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(IMAGE_SIZE, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    return tud.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                          persistent_workers=workers > 0)


def fastload_image_loader(root: str, batch_size: int, workers: int) -> fastload.DataLoader:
    from fastload.image import ImageFolder, RandomResizedCropDecode

    dataset = ImageFolder(root, transform=RandomResizedCropDecode(IMAGE_SIZE))
    return fastload.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                               persistent_workers=workers > 0, telemetry=True)


#: loader factories a remote contender can build by name
LOADERS: dict[str, Callable[..., Any]] = {"torch-image": torch_image_loader}


def _image(config: BenchConfig, batches: int | None) -> ScenarioSetup:
    from fastload.image import ImageFolder, pillow_flavour
    from fastload.image.dali import DaliImageLoader, dali_available

    from . import images, peers
    from .remote import RemoteContender

    root = config.data or images.make_image_folder(os.path.join(config.scratch, "images"), GENERATED_IMAGES,
                                                   imagenet_like=True)
    bytes_per_pixel, chroma = images.jpeg_statistics(root)
    kwargs = dict(root=root, batch_size=config.batch_size, workers=config.workers)
    costs = images.decoder_costs(root, config.probe_images, IMAGE_SIZE)
    contenders: dict[str, Contender] = {}
    closers: list[Callable[[], None]] = []
    active = pillow_flavour()
    stock = images.stock_pillow_dir()
    if active.startswith("pillow-simd") and stock is not None:
        remote = RemoteContender("torch-image", kwargs, stock)
        closers.append(remote.close)
        contenders[f"torch ({remote.pillow})"] = Contender(run=remote.run)
    contenders[f"torch ({active})"] = Contender(torch_image_loader(**kwargs))
    contenders["fastload"] = Contender(fastload_image_loader(**kwargs))
    # FFCV first: its converter forks, before DALI's threads exist. The peers use threads,
    # as many as the others' workers, and at least one (--workers 0).
    peer_threads = max(1, config.workers)
    missing: dict[str, str] = {}
    ffcv = None
    if (reason := peers.unavailable("ffcv")) is None:
        ffcv = peers.FfcvImageLoader(ImageFolder(root), os.path.join(config.scratch, "images.beton"),
                                     config.batch_size, peer_threads)
    else:
        missing["ffcv"] = reason
    if dali_available():
        dali = DaliImageLoader(ImageFolder(root), config.batch_size, num_threads=config.workers, device="cpu")
        contenders["dali-cpu"] = Contender(dali)
    if ffcv is not None:
        contenders["ffcv"] = Contender(run=ffcv.run)
    if (reason := peers.unavailable("spdl")) is None:
        contenders["spdl"] = Contender(peers.SpdlImageLoader(ImageFolder(root), config.batch_size, peer_threads))
    else:
        missing["spdl"] = reason
    ceiling = images.ceiling_img_per_s(costs, config.workers)
    epoch_images = len(ImageFolder(root))
    images_per_batch = epoch_images / math.ceil(epoch_images / config.batch_size)  # the last batch is partial

    def report(rates: dict[str, float]) -> list[str]:
        kind = "your images" if config.data else "generated, ImageNet-like"
        lines = [f"image: {root} ({kind}): {epoch_images} images, {bytes_per_pixel:.2f} bytes per pixel, chroma "
                 + ", ".join(f"{k} {n}" for k, n in sorted(chroma.items(), key=lambda kv: -kv[1]))
                 + " (of those sampled); ImageNet-1k's training JPEGs: about 0.6 bytes per pixel, mostly 4:2:0",
                 f"image: decoders (µs per image, one core): " + ", ".join(f"{name} {us:.0f}" for name, us in costs.items())]
        best, best_us = min(((n, us) for n, us in costs.items() if n.startswith("pipeline ")), key=lambda x: x[1])
        fastload_img_s = rates["fastload"] * images_per_batch
        lines.append(f"image: in-run ceiling = best full-decode {best} ({best_us:.0f} µs) x {config.workers} workers "
                     f"= {ceiling:.0f} img/s; fastload {fastload_img_s:.0f} img/s = {fastload_img_s / ceiling:.0%} of it")
        if not active.startswith("pillow-simd"):
            lines.append("image: Pillow-SIMD is not installed, so torch's baseline ran on stock Pillow only")
        if ffcv is not None:
            lines.append(f"image: ffcv: .beton written in {ffcv.write_seconds:.1f} s (not timed), JPEGs re-encoded "
                         f"by OpenCV at quality {ffcv.quality}: {ffcv.bytes_per_pixel:.2f} bytes per pixel; "
                         f"first run (numba compiles the pipeline) {ffcv.first_run_seconds:.1f} s")
        if len(missing) < 2:
            ran = {"ffcv": ffcv.threads if ffcv is not None else None,
                   "spdl": peer_threads if "spdl" not in missing else None}
            lines.append("image: peers, threads: " + ", ".join(f"{name} {n}" for name, n in ran.items() if n is not None)
                         + f" (the others: {config.workers} workers; FFCV at most the CPU count, numba's limit)")
            lines += [f"image: peers, {line}" for line in peers.FAIRNESS]
        if missing:
            lines.append("image: peers not run (`make peers` installs them): "
                         + "; ".join(f"{name}: {reason}" for name, reason in missing.items()))
        return lines

    return ScenarioSetup(contenders, report, lambda: [close() for close in closers], epoch_samples=epoch_images)


LIDAR_SCANS = 32
LIDAR_EPOCH_PASSES = 4  # an epoch goes over the scans this many times: long enough to time


def _lidar(config: BenchConfig, batches: int | None) -> ScenarioSetup:
    from fastload.lidar import LidarDataset, Voxelizer, read_point_cloud
    from fastload.lidar.synthetic import write_scan_folder

    from . import lidar

    root = config.scans or write_scan_folder(os.path.join(config.scratch, "velodyne"), LIDAR_SCANS)
    voxel_config = lidar.CONFIGS["PointPillars (KITTI)"]
    if lidar.spconv_available():
        baseline_name, baseline = "torch + spconv", lidar.SpconvVoxelizer(*voxel_config)
    else:
        baseline_name, baseline = "torch + numpy", lidar.NumpyVoxelizer(*voxel_config)
    kwargs = dict(batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
                  persistent_workers=config.workers > 0, collate_fn=fastload.VoxelCollator())
    scans = LidarDataset(root, voxelizer=baseline)
    torch_dataset = tud.ConcatDataset([scans] * LIDAR_EPOCH_PASSES)
    fastload_dataset = tud.ConcatDataset([LidarDataset(root, voxelizer=Voxelizer(*voxel_config))] * LIDAR_EPOCH_PASSES)
    contenders = {
        baseline_name: Contender(tud.DataLoader(torch_dataset, **kwargs)),
        "fastload": Contender(fastload.DataLoader(fastload_dataset, telemetry=True, **kwargs)),
    }
    latency = lidar.latency_lines(root, rounds=2)
    table = lidar.voxelizer_table(read_point_cloud(os.path.join(root, scans.name(0))).points, rounds=max(4, config.repeats))
    scans_per_batch = len(fastload_dataset) / math.ceil(len(fastload_dataset) / config.batch_size)

    def report(rates: dict[str, float]) -> list[str]:
        per_s = ", ".join(f"{name} {rate * scans_per_batch:.1f}" for name, rate in rates.items())
        summary = (f"lidar: {root}: {len(scans)} scans x {LIDAR_EPOCH_PASSES} per epoch, read and voxelized "
                   f"(PointPillars, KITTI) in the workers; scans/s: {per_s}")
        return [summary, *latency, *table]

    return ScenarioSetup(contenders, report, epoch_samples=len(fastload_dataset))


SCENARIOS: dict[str, Scenario] = {
    "overhead": Scenario(
        "overhead", "pre-decoded uint8 3x224x224 images from memory: the loader's own cost", 200, _overhead
    ),
    "text": Scenario(
        "text",
        f"{TEXT_SEQUENCES} token sequences, log-normal lengths (median 100, up to 2048), padded: "
        "random batches vs length bucketing",
        200,
        _text,
    ),
    "image": Scenario(
        "image",
        f"{GENERATED_IMAGES} JPEG photos (or --data DIR), RandomResizedCrop {IMAGE_SIZE} + flip: "
        "torch's standard pipeline vs fastload's fused decode vs DALI CPU, FFCV and SPDL where installed",
        None,
        _image,
    ),
    "lidar": Scenario(
        "lidar",
        f"{LIDAR_SCANS} generated 64-beam scans (or --scans DIR) read and voxelized for PointPillars in the "
        "workers: torch + spconv (numpy without spconv) vs fastload; then per-scan latency p50/p99 (read, "
        "augment, voxelize, collate) against the 100 ms budget, and the single-scan voxelizer table "
        "(fastload, spconv, numpy, copy) for PointPillars, SECOND and CenterPoint",
        None,
        _lidar,
        default_batch_size=4,
    ),
}
