"""pytest-benchmark suite: loader overhead, fastload against torch, measured in the same run.

Run with ``.venv/bin/python -m pytest benchmarks --benchmark-only``; compare the
``fastload`` and ``torch`` rows of a group (same dataset, same workers) as a ratio.
The suite is not part of ``make test``: speed never gates CI.
"""

from __future__ import annotations

import pytest
import torch.utils.data

import fastload
from fastload.bench.scenarios import PreDecodedImages

LOADERS = {"torch": torch.utils.data.DataLoader, "fastload": fastload.DataLoader}
BATCHES = 100
BATCH_SIZE = 64


@pytest.fixture(scope="module")
def dataset():
    return PreDecodedImages(BATCHES * BATCH_SIZE)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", list(LOADERS))
def test_epoch_of_predecoded_images(benchmark, dataset, name, num_workers):
    benchmark.group = f"overhead, {num_workers} workers"
    loader = LOADERS[name](dataset, batch_size=BATCH_SIZE, num_workers=num_workers,
                           persistent_workers=num_workers > 0)
    for _ in loader:  # warm-up: start the workers
        pass

    def epoch() -> int:
        return sum(1 for _ in loader)

    assert benchmark.pedantic(epoch, rounds=5, iterations=1) == BATCHES
