"""Benchmark scenarios: a dataset generator plus the loader arguments to compare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class PreDecodedImages(Dataset):
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


@dataclass
class Scenario:
    name: str
    description: str
    make_dataset: Callable[[int, int], Dataset]  # (batches, batch_size) -> dataset
    loader_kwargs: dict[str, Any] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    "overhead": Scenario(
        name="overhead",
        description="pre-decoded uint8 3x224x224 images from memory: the loader's own cost",
        make_dataset=lambda batches, batch_size: PreDecodedImages(batches * batch_size),
    ),
}
