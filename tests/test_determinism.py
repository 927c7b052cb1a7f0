"""The same batches come out for any number of workers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import fastload

from .datasets import RandomAugment, Squares
from .helpers import assert_same, needs_cuda


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
    def draws():
        return torch.rand(3).tolist(), random.random(), np.random.rand()

    def seeded():
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)

    seeded()
    for _ in loader:
        pass
    observed = draws()
    seeded()
    assert observed == draws()


class BatchFetched(torch.utils.data.Dataset):
    """Fetches whole batches (``__getitems__``, as HF datasets and torch's Subset do), with a
    random augmentation drawn per sample; each sample says it came through __getitems__."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item(), 0.0])

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        noise = torch.rand(len(indices))
        return [torch.tensor([float(i), float(v), 1.0]) for i, v in zip(indices, noise)]


def test_seed_per_sample_fetches_batches_through_getitems_seeded_per_batch():
    reference = torch.cat(epoch(BatchFetched(), 0, seed_per_sample=True))
    assert reference[:, 2].eq(1).all()  # every sample came through __getitems__
    for num_workers in (1, 2):
        assert torch.equal(torch.cat(epoch(BatchFetched(), num_workers, seed_per_sample=True)), reference)
    assert len(set(reference[:, 1].tolist())) == len(reference)  # random: no two draws alike
    assert not torch.equal(torch.cat(epoch(BatchFetched(), 0, seed=8, seed_per_sample=True)).sort(0).values,
                           reference.sort(0).values)


def test_seed_per_sample_is_the_same_with_or_without_persistent_workers():
    def two_epochs(**kwargs):
        loader = fastload.DataLoader(RandomAugment(), batch_size=4, shuffle=True, seed_per_sample=True,
                                     generator=torch.Generator().manual_seed(2), **kwargs)
        return [torch.cat(list(loader)) for _ in range(2)]

    reference = two_epochs()
    for other in (two_epochs(num_workers=2), two_epochs(num_workers=2, persistent_workers=True)):
        # the orders differ from epoch 1 on (torch draws a base seed per epoch only without
        # persistent workers); each sample's augmentation does not
        for ours, theirs in zip(other, reference):
            assert torch.equal(ours[ours[:, 0].argsort()], theirs[theirs[:, 0].argsort()])


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


@needs_cuda
def test_seed_per_sample_in_the_main_process_gives_back_the_cuda_rng():
    torch.cuda.manual_seed_all(0)
    before = torch.cuda.get_rng_state_all()
    list(fastload.DataLoader(RandomAugment(), batch_size=8, seed_per_sample=True))
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), before))
