"""What ``seed_per_sample=True`` costs: samples/s with it off and on, in the same run.

Two datasets: small augmented samples (a 3x64x64 random tensor, flipped half of the
time: about 25-40 µs each, where seeding would show most) and the bench's image pipeline
(JPEG decode fused with a random resized crop to 224, and a flip). Each is loaded in-process
(``num_workers=0``: the global RNGs are also saved and restored around each batch) and
with 2 workers; off and on alternate, in pairs of fresh loaders, each timed over one epoch
after a warm-up epoch.

    .venv/bin/python benchmarks/seed_per_sample_cost.py [--pairs 6] [--images DIR]

Prints, per dataset and worker count, samples/s off and on (medians over the pairs) and
the median of the per-pair on/off ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import torch
import torch.utils.data as tud

import fastload


class SmallAugmented(tud.Dataset):
    def __len__(self) -> int:
        return 4096

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.rand(3, 64, 64)
        return image.flip(-1) if random.random() < 0.5 else image


def samples_per_s(dataset: tud.Dataset, workers: int, seed_per_sample: bool, batch_size: int) -> float:
    loader = fastload.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 persistent_workers=workers > 0, seed_per_sample=seed_per_sample,
                                 generator=torch.Generator().manual_seed(0))
    for _batch in loader:  # warm-up: workers started, slots mapped, caches warm
        pass
    start = time.perf_counter()
    count = sum(len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch) for batch in loader)
    return count / (time.perf_counter() - start)


def compare(name: str, dataset: tud.Dataset, workers: int, pairs: int, batch_size: int) -> None:
    off_rates, on_rates, ratios = [], [], []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        rates = {flag: samples_per_s(dataset, workers, flag, batch_size) for flag in order}
        off_rates.append(rates[False])
        on_rates.append(rates[True])
        ratios.append(rates[True] / rates[False])
    print(f"{name}, num_workers={workers}: off {statistics.median(off_rates):,.0f} samples/s, "
          f"on {statistics.median(on_rates):,.0f} samples/s; on/off per pair "
          + " ".join(f"{r:.3f}" for r in ratios) + f"; median {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--images", help="an image folder (default: 512 generated JPEGs in a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for workers in (0, 2):
        compare("small augmented samples (3x64x64 + flip)", SmallAugmented(), workers, args.pairs, 64)
    from fastload.bench.images import make_image_folder
    from fastload.image import ImageFolder, RandomResizedCropDecode

    with tempfile.TemporaryDirectory() as scratch:
        root = args.images or make_image_folder(os.path.join(scratch, "images"), 512)
        dataset = ImageFolder(root, transform=RandomResizedCropDecode(224))
        for workers in (0, 2):
            compare("image pipeline (JPEG crop-decode to 224 + flip)", dataset, workers, args.pairs, 32)


if __name__ == "__main__":
    main()
