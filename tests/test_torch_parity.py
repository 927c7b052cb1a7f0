"""fastload against torch's DataLoader as the oracle: the same seeds give the same data.

Over random configurations (NOTE [ Seeds ] in ``fastload/seeding.py``): the index
sequences, the worker seeds, the values a dataset draws from ``torch``/``random``/
``numpy`` in workers (or the main process) and the main process's RNGs after two epochs
are equal, for a loader ``generator`` or the global seed alike.
"""

from __future__ import annotations

import multiprocessing.process
import random
import typing
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import fastload

from .conftest import child_pids, wait_until

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


# Messages people and tools match on: torch's words first (then fastload's hint).

class ClaimsThree(tud.IterableDataset):
    def __len__(self) -> int:
        return 3

    def __iter__(self):
        return iter(range(5))

    def __repr__(self) -> str:
        return "ClaimsThree()"


def _warnings_of(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        except Exception:
            pass
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_iterable_dataset_longer_than_its_len_warns_in_torchs_words(num_workers):
    def run(cls):
        loader = cls(ClaimsThree(), batch_size=None, num_workers=num_workers)
        len(loader)
        list(loader)

    theirs = [m for m in _warnings_of(lambda: run(tud.DataLoader)) if m.startswith("Length of IterableDataset")]
    ours = [m for m in _warnings_of(lambda: run(fastload.DataLoader)) if m.startswith("Length of IterableDataset")]
    assert theirs and len(ours) == len(theirs)
    assert all(o.startswith(t) for o, t in zip(ours, theirs)), (ours[0], theirs[0])
    assert ("each worker must yield its own shard" in ours[0]) == (num_workers > 0)


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_an_unpicklable_argument_warns_in_torchs_words_and_names_itself(context, no_leaks):
    def run(cls):
        list(cls(range(8), batch_size=4, num_workers=2, collate_fn=lambda batch: batch,
                 multiprocessing_context=context))

    theirs = [m for m in _warnings_of(lambda: run(tud.DataLoader)) if "pickle error" in m]
    assert theirs
    with pytest.warns(UserWarning) as caught, pytest.raises(TypeError, match=r"collate_fn=<function .*<lambda>"):
        run(fastload.DataLoader)
    assert [str(w.message) for w in caught if "pickle error" in str(w.message)] == theirs


def test_the_loader_is_generic_as_torchs():
    assert typing.get_args(fastload.DataLoader[int]) == (int,)
    assert typing.get_origin(fastload.DataLoader[int]) is fastload.DataLoader
    assert len(fastload.DataLoader.__parameters__) == len(tud.DataLoader.__parameters__) == 1
    loader = fastload.DataLoader[int](range(4), batch_size=2)
    assert isinstance(loader, tud.DataLoader) and [b.tolist() for b in loader] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("persistent", [False, True])
def test_the_iterator_lists_its_worker_processes_as_torchs_does(persistent, no_leaks):
    loader = fastload.DataLoader(range(8), batch_size=2, num_workers=2, persistent_workers=persistent)
    it = iter(loader)
    workers = it._workers
    assert len(workers) == 2 and all(isinstance(w, multiprocessing.process.BaseProcess) for w in workers)
    assert all(w.is_alive() for w in workers) and len({w.pid for w in workers}) == 2
    assert {w.pid for w in workers} <= child_pids()
    list(it)
    if persistent:
        assert all(w.is_alive() for w in iter(loader)._workers)
    else:
        assert wait_until(lambda: not any(w.is_alive() for w in workers))
    assert not hasattr(iter(fastload.DataLoader(range(4))), "_workers")
    assert not hasattr(iter(tud.DataLoader(range(4))), "_workers")


class OddlyStrided(tud.Dataset):
    """Tensors whose strides are not the contiguous ones. ``gappy_*`` views skip storage:
    fastload copies those compact (torch keeps the strides and shares the whole storage)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        base = torch.arange(120.0) + 1000 * index
        return {
            "expanded": torch.arange(3.0).expand(1000, 3),
            "channels_last": base.reshape(1, 4, 5, 6).contiguous(memory_format=torch.channels_last),
            "transposed": base[:24].reshape(4, 6).t(),
            "gappy_every_third": base[::3],
            "gappy_column": base.reshape(12, 10)[:, 3],
            "contiguous": base[10:20],
            "empty_transposed": torch.empty(0, 3).t(),
            "row_of_a_column": base[:4].reshape(4, 1).t(),  # contiguous, with a stride of its own on a size-1 dim
        }


def _strides(batch: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {key: (value.shape, value.stride(), value.dtype) for key, value in batch.items()
            if not key.startswith("gappy")}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size, collate_fn", [(None, None), (2, lambda samples: samples[-1])])
def test_tensors_keep_torchs_strides_and_memory_format(num_workers, batch_size, collate_fn, no_leaks):
    def run(cls):
        return list(cls(OddlyStrided(), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                        multiprocessing_context="fork" if num_workers else None))

    theirs, ours = run(tud.DataLoader), run(fastload.DataLoader)
    assert [_strides(b) for b in ours] == [_strides(b) for b in theirs]
    for mine, reference in zip(ours, theirs):
        assert all(torch.equal(mine[key], reference[key]) for key in reference)
        assert mine["channels_last"].is_contiguous(memory_format=torch.channels_last)
        assert mine["expanded"].untyped_storage().nbytes() == 3 * 4  # not materialised
        if num_workers:  # across the worker boundary, a view with gaps comes compact
            assert all(mine[key].is_contiguous() and mine[key].untyped_storage().nbytes() == mine[key].nbytes
                       for key in mine if key.startswith("gappy"))
