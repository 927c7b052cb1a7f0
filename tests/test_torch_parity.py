"""fastload against torch's DataLoader as the oracle: the same seeds give the same data.

Over random configurations (NOTE [ Seeds ] in ``fastload/seeding.py``): the index
sequences, the worker seeds, the values a dataset draws from ``torch``/``random``/
``numpy`` in workers (or the main process) and the main process's RNGs after two epochs
are equal, for a loader ``generator`` or the global seed alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import fastload

CONFIGURATIONS = 200


class DrawingDataset(tud.Dataset):
    """Each sample: its index, who fetched it with which seed, and what it drew."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        info = tud.get_worker_info()
        fetched_by = (info.id, info.seed, torch.initial_seed()) if info is not None else (-1, -1, -1)
        return torch.tensor([index, *fetched_by, torch.rand(()).item(), random.random(), np.random.rand()],
                            dtype=torch.float64)


@dataclass(frozen=True)
class Configuration:
    n: int
    order: str  # "sequential" | "shuffle" | "sampler" | "torch_sampler" | "batch_sampler"
    replacement: bool
    num_samples: int | None
    batch_size: int | None
    drop_last: bool
    loader_seed: int | None  # the loader's generator's seed (None: the global RNG)
    sampler_seed: int | None  # the sampler's own generator's seed (None: none of its own)
    num_workers: int
    persistent: bool

    @classmethod
    def draw(cls, k: int) -> Configuration:
        rng = random.Random(k)
        n = rng.randint(1, 23)
        order = rng.choice(["sequential", "shuffle", "sampler", "torch_sampler", "batch_sampler"])
        replacement = order != "sequential" and order != "shuffle" and rng.random() < 0.4
        num_samples = rng.choice([None, rng.randint(1, 3 * n)]) if order in ("sampler", "torch_sampler",
                                                                             "batch_sampler") else None
        batch_size = rng.choice([None, 1, 2, 3, 5]) if order != "batch_sampler" else rng.choice([1, 2, 4])
        drop_last = batch_size is not None and rng.random() < 0.5
        loader_seed = rng.choice([None, rng.randrange(1 << 20)])
        sampler_seed = rng.choice([None, rng.randrange(1 << 20)]) if order not in ("sequential", "shuffle") else None
        num_workers = rng.choice([0, 2])
        persistent = num_workers > 0 and rng.random() < 0.5
        return cls(n, order, replacement, num_samples, batch_size, drop_last, loader_seed, sampler_seed, num_workers,
                   persistent)


def _random_sampler(cls: type, config: Configuration, dataset: tud.Dataset) -> tud.Sampler:
    generator = torch.Generator().manual_seed(config.sampler_seed) if config.sampler_seed is not None else None
    return cls(dataset, replacement=config.replacement, num_samples=config.num_samples, generator=generator)


def build(loader_cls: type, sampler_cls: type, config: Configuration) -> tud.DataLoader:
    dataset = DrawingDataset(config.n)
    generator = torch.Generator().manual_seed(config.loader_seed) if config.loader_seed is not None else None
    kwargs: dict[str, Any] = dict(num_workers=config.num_workers, persistent_workers=config.persistent,
                                  generator=generator)
    if config.order == "batch_sampler":
        batches = tud.BatchSampler(_random_sampler(sampler_cls, config, dataset), config.batch_size, config.drop_last)
        return loader_cls(dataset, batch_sampler=batches, **kwargs)
    kwargs.update(batch_size=config.batch_size, drop_last=config.drop_last)
    if config.order in ("sampler", "torch_sampler"):
        kwargs["sampler"] = _random_sampler(sampler_cls if config.order == "sampler" else tud.RandomSampler, config,
                                            dataset)
    return loader_cls(dataset, shuffle=config.order == "shuffle", **kwargs)


def two_epochs(loader_cls: type, sampler_cls: type, config: Configuration) -> tuple[list[torch.Tensor], list[float]]:
    """What two epochs delivered, then the main process's next draw from each global RNG."""
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    loader = build(loader_cls, sampler_cls, config)
    epochs = [torch.cat([batch.reshape(-1, 7) for batch in loader]) if len(loader) else torch.empty(0, 7)
              for _ in range(2)]
    return epochs, [torch.rand(()).item(), random.random(), np.random.rand()]


@pytest.mark.parametrize("k", range(CONFIGURATIONS))
def test_same_seeds_give_torchs_data(k):
    config = Configuration.draw(k)
    theirs = two_epochs(tud.DataLoader, tud.RandomSampler, config)
    ours = two_epochs(fastload.DataLoader, fastload.RandomSampler, config)
    for epoch, (expected, got) in enumerate(zip(theirs[0], ours[0])):
        assert got.shape == expected.shape, f"{config}: epoch {epoch} has {len(got)} samples, torch's {len(expected)}"
        assert torch.equal(got[:, 0], expected[:, 0]), f"{config}: epoch {epoch}'s indices differ from torch's"
        assert torch.equal(got[:, 1:4], expected[:, 1:4]), f"{config}: epoch {epoch}'s workers or seeds differ"
        assert torch.equal(got, expected), f"{config}: epoch {epoch}'s values drawn in the dataset differ"
    assert ours[1] == theirs[1], f"{config}: the main process's RNGs were drawn from otherwise than torch's"


def test_configurations_cover_the_space():
    configs = [Configuration.draw(k) for k in range(CONFIGURATIONS)]
    for attribute, values in [("order", {"sequential", "shuffle", "sampler", "torch_sampler", "batch_sampler"}),
                              ("num_workers", {0, 2}), ("persistent", {False, True}), ("drop_last", {False, True}),
                              ("replacement", {False, True})]:
        assert {getattr(c, attribute) for c in configs} == values, attribute
    assert any(c.batch_size is None for c in configs) and any(c.num_samples for c in configs)
    assert any(c.loader_seed is None for c in configs) and any(c.loader_seed is not None for c in configs)
    assert any(c.sampler_seed is not None for c in configs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_global_seed_before_each_iteration_repeats_the_order(num_workers):
    loader = fastload.DataLoader(DrawingDataset(16), batch_size=4, shuffle=True, num_workers=num_workers)
    torch.manual_seed(0)
    first = torch.cat(list(loader))
    torch.manual_seed(0)
    second = torch.cat(list(loader))
    third = torch.cat(list(loader))
    assert torch.equal(first[:, :4], second[:, :4])
    assert not torch.equal(second[:, 0], third[:, 0])


def test_a_sampler_generator_set_after_construction_makes_two_ranks_agree():
    """What Accelerate does: each rank seeded otherwise, one generator synchronised across ranks
    and assigned to the sampler after the loader was built."""
    orders = []
    for rank_seed in (11, 22):
        torch.manual_seed(rank_seed)
        loader = fastload.DataLoader(DrawingDataset(32), batch_size=8, shuffle=True)
        loader.sampler.generator = torch.Generator().manual_seed(42)
        orders.append(torch.cat(list(loader))[:, 0])
    assert torch.equal(orders[0], orders[1])
    torch_loader = tud.DataLoader(DrawingDataset(32), batch_size=8, shuffle=True)
    torch_loader.sampler.generator = torch.Generator().manual_seed(42)
    assert torch.equal(torch.cat(list(torch_loader))[:, 0], orders[0])
