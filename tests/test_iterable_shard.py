"""DistributedIterableDataset: an IterableDataset split across ranks batch by batch."""

from __future__ import annotations

import pytest
import torch
import torch.utils.data as tud

import fastload

from .datasets import ShardedStream


class Count(tud.IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("n", [45, 48, 3, 0])
def test_every_rank_gets_as_many_items_and_real_ones_come_first_when_gathered(n):
    world, size = 3, 4
    parts = [list(fastload.DistributedIterableDataset(Count(n), size, world, r)) for r in range(world)]
    steps = -(-n // (size * world))
    assert all(len(p) == steps * size for p in parts)
    gathered = [i for step in range(steps) for p in parts for i in p[step * size:(step + 1) * size]]
    assert gathered[:n] == list(range(n)) and gathered[n:] == [i % n for i in range(len(gathered) - n)]
    assert [len(fastload.DistributedIterableDataset(Count(n), size, world, r)) for r in range(world)] == \
        [len(p) for p in parts]


def test_drop_last_drops_the_incomplete_step():
    parts = [list(fastload.DistributedIterableDataset(Count(45), 4, 2, r, drop_last=True)) for r in (0, 1)]
    assert parts[0] == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27, 32, 33, 34, 35]
    assert sorted(parts[0] + parts[1]) == list(range(40))


def test_in_a_loader_each_workers_stream_is_split():
    def rank(r):
        dataset = fastload.DistributedIterableDataset(ShardedStream(30), 2, num_replicas=2, rank=r)
        return [v for b in fastload.DataLoader(dataset, batch_size=2, num_workers=3) for v in b.flatten().tolist()]
    parts = [rank(0), rank(1)]
    assert len(parts[0]) == len(parts[1]) and set(parts[0]) | set(parts[1]) == set(range(30))


@pytest.mark.parametrize("batch_size", [0, 1.5, None])
def test_batch_size_must_be_positive(batch_size):
    with pytest.raises(ValueError, match="batch_size should be a positive integer"):
        fastload.DistributedIterableDataset(Count(4), batch_size, 2, 0)


def test_the_rank_must_be_one_of_the_replicas():
    with pytest.raises(ValueError, match="Invalid rank 2"):
        fastload.DistributedIterableDataset(Count(4), 2, 2, 2)


def test_a_stream_without_len_has_none():
    with pytest.raises(TypeError, match="has no len"):
        len(fastload.DistributedIterableDataset(ShardedStream(4), 2, 2, 0))
    assert torch.is_tensor(next(iter(fastload.DistributedIterableDataset(ShardedStream(4), 2, 2, 0))))
