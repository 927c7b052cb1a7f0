"""The same batches come out for any number of workers."""

from __future__ import annotations

import pytest
import torch

import fastload

from .datasets import RandomAugment, Squares
from .helpers import assert_same


def epoch(dataset, num_workers, seed=7, **kwargs):
    loader = fastload.DataLoader(dataset, batch_size=5, shuffle=True, num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(seed), **kwargs)
    return list(loader)


def test_deterministic_dataset_gives_same_batches_for_any_worker_count():
    reference = epoch(Squares(), 0)
    for num_workers in (1, 2, 3):
        for a, b in zip(reference, epoch(Squares(), num_workers)):
            assert_same(a, b)


def test_seed_per_sample_makes_random_augmentations_worker_count_independent():
    reference = epoch(RandomAugment(), 0, seed_per_sample=True)
    for num_workers in (1, 2, 3):
        got = epoch(RandomAugment(), num_workers, seed_per_sample=True)
        for a, b in zip(reference, got):
            assert torch.equal(a, b)
    # and the augmentations really are random: they differ between samples and seeds
    values = torch.cat(reference)[:, 1]
    assert len(set(values.tolist())) == len(values)
    other_seed = torch.cat(epoch(RandomAugment(), 0, seed=8, seed_per_sample=True))
    assert not torch.equal(torch.cat(reference).sort(0).values, other_seed.sort(0).values)


def test_seed_per_sample_differs_between_epochs():
    loader = fastload.DataLoader(RandomAugment(), batch_size=48, generator=torch.Generator().manual_seed(1),
                                 seed_per_sample=True)
    first = next(iter(loader))
    second = next(iter(loader))
    assert not torch.equal(first[:, 1], second[:, 1])


def test_seed_per_sample_does_not_disturb_the_training_loops_rng():
    loader = fastload.DataLoader(RandomAugment(), batch_size=8, generator=torch.Generator().manual_seed(1),
                                 seed_per_sample=True)
    torch.manual_seed(0)
    for _ in loader:
        pass
    observed = torch.rand(3)
    torch.manual_seed(0)
    expected = torch.rand(3)
    assert torch.equal(observed, expected)


def test_default_worker_seeding_follows_torchs_rule_and_is_reproducible():
    """Without seed_per_sample, worker w is seeded epoch_seed + w (torch's rule)."""
    def run():
        loader = fastload.DataLoader(RandomAugment(), batch_size=4, num_workers=2,
                                     generator=torch.Generator().manual_seed(3))
        return [torch.cat(list(loader)) for _ in range(2)]

    first, second = run(), run()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])  # a new epoch seeds the workers anew


def test_seed_per_sample_rejects_iterable_datasets():
    from .datasets import Range

    with pytest.raises(ValueError, match="map-style"):
        fastload.DataLoader(Range(0, 4), seed_per_sample=True)
