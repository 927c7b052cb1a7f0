"""Train a small classifier with fastload.DataLoader: the one-import change, end to end.

    python examples/train_synthetic_classifier.py --workers 2 --steps 50

The dataset stands in for yours: any torch Dataset works unchanged. On a machine with
CUDA the batches arrive on the GPU through fastload's pinned, side-stream prefetcher.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import Dataset

import fastload


class SyntheticImages(Dataset):
    """Random 3x64x64 uint8 images whose label is the channel with the highest mean."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(index)
        image = torch.randint(0, 200, (3, 64, 64), dtype=torch.uint8, generator=g)
        label = index % 3
        image[label] += 55  # a learnable signal
        return image, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)  # model initialisation; the loader has its own generator
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = fastload.DataLoader(
        SyntheticImages(args.batch_size * args.steps),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        device=device,
        generator=torch.Generator().manual_seed(0),
        seed_per_sample=True,
        telemetry=True,  # loader.stats(): per-stage times and the data-stall fraction
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    for step, (images, labels) in enumerate(loader):
        logits = model(images.float().div_(255))
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    stats = loader.stats()
    print(stats)
    print(f"{stats.samples_per_s:.0f} samples/s on {device}, data stall {stats.stall_fraction:.1%}")


if __name__ == "__main__":
    main()
